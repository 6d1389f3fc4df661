"""A filter's dataset examples chosen among its candidates: strongest first, each a distinct place.

Overlapping crops of one photo, or one image twice in a dataset, show the same pixels
under different dataset indices, and the filter fires on them alike: left alone, one place
fills several of a filter's ``k`` examples. Here the candidates that the device kept
(:class:`~lightning_filterviz.capture.dataset_examples.ExampleCollector`) are taken
strongest first, and one is skipped when it shows a place already chosen: when, with both
context windows aligned at their peaks (the receptive field's centre), at some shift of at
most :data:`SHIFT_PIXELS` pixels the pixels both hold (finite, at least
:data:`MIN_OVERLAP` of those compared) differ by at most :data:`TOLERANCE` of the value
range of the filter's candidates in root mean square (all channels): the square weighs a
small feature that differs (a spot in a flat image) more than an average would. The shift
absorbs a peak found a pixel or two apart on the same content (a strided layer sees crops
on different grids). Where a window reaches past its image, that part counts as a value
one range below the smallest: it matches only the outside of another image, so two small
images are one place only where they and their edges line up, and a difference is never
left out of the comparison for lying beyond the other's edge.
What is compared is a :data:`REGION_PIXELS` square around each peak: it holds the field and
its surroundings, which tell places apart, at a quarter of the window's work.

NumPy only: it runs on the writer thread, after the one copy to the host.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from lightning_filterviz.core.records import NO_INDEX, LayerExamples
from lightning_filterviz.core.tiles import outside_the_image

__all__ = ["MIN_OVERLAP", "REGION_PIXELS", "SHIFT_PIXELS", "TOLERANCE", "distinct_places"]

SHIFT_PIXELS = 2
REGION_PIXELS = 16
TOLERANCE = 0.03
MIN_OVERLAP = 0.25


def distinct_places(candidates: LayerExamples, k: int) -> LayerExamples:
    """The ``k`` strongest of each filter's candidates that show distinct places (see the
    module's docstring), strongest first; where fewer are distinct, the remaining slots are
    empty (value ``-inf``, index ``-1``, patch NaN).

    Args:
        candidates: one layer's candidates ``(F, slots, ...)`` on the host.
        k: examples per filter.
    """
    values = candidates.values.numpy()
    patches = candidates.patches.numpy()
    boxes = candidates.boxes.numpy()
    peaks = boxes[..., :2] + boxes[..., 2:] // 2  # (F, slots, 2) in the window's pixels
    chosen = np.full((len(values), k), -1, dtype=np.int64)
    for filter_index in range(len(values)):
        picked = _distinct(values[filter_index], patches[filter_index], peaks[filter_index], k)
        chosen[filter_index, : len(picked)] = picked
    return LayerExamples(
        **{
            field.name: _taken(getattr(candidates, field.name).numpy(), chosen, _EMPTY[field.name])
            for field in dataclasses.fields(candidates)
        }
    )


# What an empty slot holds, per field of LayerExamples.
_EMPTY = {"values": -np.inf, "indices": NO_INDEX, "positions": 0, "patches": np.nan, "boxes": 0}


def _taken(array: np.ndarray, chosen: np.ndarray, empty: float) -> torch.Tensor:
    """``array[f, chosen[f, j]]``, ``empty`` where ``chosen`` is ``-1``."""
    rows = np.arange(len(chosen))[:, None]
    taken = array[rows, chosen.clip(min=0)]
    taken[chosen < 0] = empty
    return torch.from_numpy(np.ascontiguousarray(taken))


def _distinct(values: np.ndarray, patches: np.ndarray, peaks: np.ndarray, k: int) -> list[int]:
    """The slots of the ``k`` strongest candidates of distinct places (``patches``
    ``(slots, C, h, w)``, ``peaks`` ``(slots, 2)``); empty slots (``-inf``) never."""
    order = [slot for slot in np.argsort(-values, kind="stable") if np.isfinite(values[slot])]
    finite = patches[order][np.isfinite(patches[order])]
    low, span = (float(finite.min()), float(finite.max() - finite.min())) if finite.size else (0.0, 0.0)
    tolerance = TOLERANCE * span
    picked: list[int] = []
    # Per picked candidate, its region at every shift, filled in place as candidates are
    # picked, so that each comparison reads the picked ones without stacking them anew.
    shifts = 2 * SHIFT_PIXELS + 1
    shifted = np.empty((k, patches.shape[1], shifts, shifts, REGION_PIXELS, REGION_PIXELS), dtype=np.float32)
    for slot in order:
        outside = outside_the_image(patches[slot][None])[0]
        patch = np.where(outside[None], np.float32(low - max(span, 1.0)), patches[slot])
        region = _region(patch, peaks[slot])
        if picked and _matches(region, shifted[: len(picked)], tolerance):
            continue
        shifted[len(picked)] = sliding_window_view(region, (REGION_PIXELS, REGION_PIXELS), axis=(1, 2))
        picked.append(int(slot))
        if len(picked) == k:
            break
    return picked


def _region(patch: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """The ``(C, R + 2s, R + 2s)`` square of ``patch`` around ``peak`` (R the region, s the
    largest shift), NaN where it reaches past the patch."""
    size = REGION_PIXELS + 2 * SHIFT_PIXELS
    channels, height, width = patch.shape
    region = np.full((channels, size, size), np.nan, dtype=np.float32)
    top, left = int(peak[0]) - size // 2, int(peak[1]) - size // 2
    rows = slice(max(top, 0), min(top + size, height))
    cols = slice(max(left, 0), min(left + size, width))
    if rows.start < rows.stop and cols.start < cols.stop:
        region[:, rows.start - top : rows.stop - top, cols.start - left : cols.stop - left] = patch[:, rows, cols]
    return region


def _matches(region: np.ndarray, shifted: np.ndarray, tolerance: float) -> bool:
    """Whether ``region``'s centre matches any of ``shifted`` ``(P, C, 2s+1, 2s+1, R, R)``
    at any shift (see the module's docstring)."""
    centre = region[:, SHIFT_PIXELS : SHIFT_PIXELS + REGION_PIXELS, SHIFT_PIXELS : SHIFT_PIXELS + REGION_PIXELS]
    with np.errstate(invalid="ignore"):
        difference = centre[None, :, None, None] - shifted  # NaN where either lacks the pixel
    both = np.isfinite(difference)
    counted = both.sum(axis=(1, 4, 5))  # (P, 2s+1, 2s+1)
    # In place: the difference is this call's own, and the largest array here.
    difference[~both] = 0.0
    np.square(difference, out=difference)
    enough = counted >= MIN_OVERLAP * centre.size
    mean_square = difference.sum(axis=(1, 4, 5)) / np.maximum(counted, 1)
    return bool((enough & (mean_square <= tolerance**2)).any())
