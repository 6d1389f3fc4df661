"""Learning progress across snapshots: filter drift, filmstrip rows, and the history on disk.

Drift is the angle view of a filter: a conv output is a dot product with the filter, so
what a filter responds to is its direction. ``1 - cos(W_now[c], W_init[c])`` is 0 for a
filter that kept its direction, 1 for one that turned orthogonal and 2 for a negated one;
the weight norm beside it says how much it grew or shrank.

Everything here runs on the training thread on small CPU arrays (NumPy, no torch op on
another thread), and everything it keeps across snapshots is capped by ``max_filters``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from lightning_filterviz.capture import Snapshot
from lightning_filterviz.render import WeightNormalization, displayed_filters, normalize_filters, to_uint8

HISTORY_FORMAT = "lightning_filterviz.history/1"
HISTORY_PATTERN = "step_*.npz"


def filter_drift(weight: Tensor, initial: Tensor) -> Tensor:
    """Cosine distance of each filter from its initial weights: ``(F,)`` in [0, 2].

    A filter that is all zeros now or at the start has no direction; its drift is 1.
    """
    return drift_and_norm_ratio(weight, initial)[0]


def drift_and_norm_ratio(weight: Tensor, initial: Tensor) -> tuple[Tensor, Tensor]:
    """Per filter: :func:`filter_drift`, and its L2 norm over the initial one (1 where that was 0)."""
    now, start = weight.flatten(1).float(), initial.flatten(1).float()
    now_norm = torch.linalg.vector_norm(now, dim=1)
    start_norm = torch.linalg.vector_norm(start, dim=1)
    # Three passes over the filters in float32 (dividing twice, so no product of norms overflows):
    # this runs on the training thread at every snapshot.
    directed = (now_norm > 0) & (start_norm > 0)
    dot = torch.linalg.vecdot(now, start)
    cosine = dot / torch.where(directed, now_norm, 1.0) / torch.where(directed, start_norm, 1.0)
    drift = 1.0 - torch.where(directed, cosine.clamp(-1.0, 1.0), 0.0)
    ratio = torch.where(start_norm > 0, now_norm / torch.where(start_norm > 0, start_norm, 1.0), 1.0)
    return drift, ratio


class ProgressTracker:
    """Keeps what the progress views need from one snapshot to the next.

    Args:
        filmstrip_layers: layers whose filters are kept for the filmstrip, one row per snapshot.
    """

    def __init__(self, filmstrip_layers: Sequence[str] = ()) -> None:
        self.filmstrip_layers = list(filmstrip_layers)
        self._initial: dict[str, Tensor] = {}
        self._filmstrips: dict[str, list[np.ndarray]] = {}

    def update(
        self,
        snapshot: Snapshot,
        normalization: WeightNormalization,
        symmetric_ranges: dict[str, float],
    ) -> None:
        """Set ``snapshot.drift`` and ``snapshot.weight_norm_ratio``; add this snapshot's filmstrip rows."""
        for name, layer in snapshot.layers.items():
            initial = self._initial.get(name)
            if initial is None or initial.shape != layer.weight.shape:
                initial = self._initial[name] = layer.weight.clone()
            snapshot.drift[name], snapshot.weight_norm_ratio[name] = drift_and_norm_ratio(layer.weight, initial)
            if name in self.filmstrip_layers:
                shown = displayed_filters(layer.weight.numpy(), layer.rgb)
                unit = normalize_filters(shown, normalization, symmetric_ranges.get(name))
                self._filmstrips.setdefault(name, []).append(to_uint8(unit).transpose(0, 2, 3, 1))

    def filmstrip_rows(self, layer: str) -> list[np.ndarray]:
        """The layer's filters at every snapshot so far: ``(F, kh, kw, C)`` ``uint8`` each."""
        return list(self._filmstrips.get(layer, []))

    def state_dict(self) -> dict[str, Any]:
        return {
            "initial": {name: weight.clone() for name, weight in self._initial.items()},
            "filmstrips": {name: [torch.from_numpy(row) for row in rows] for name, rows in self._filmstrips.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._initial = {name: weight.clone() for name, weight in state.get("initial", {}).items()}
        self._filmstrips = {
            name: [row.numpy() for row in rows] for name, rows in state.get("filmstrips", {}).items()
        }


def history_arrays(snapshot: Snapshot, drawn: Optional[Mapping[str, np.ndarray]] = None) -> dict[str, np.ndarray]:
    """One snapshot as plain arrays for an NPZ file (no objects, so ``allow_pickle=False`` loads it).

    ``drawn`` may give, per layer, what :func:`displayed_filters` returns for its filters,
    when it was already computed to draw them.

    Keys: ``format``, ``step``, ``layers`` and, per layer, ``<layer>/filters`` (the drawn
    part of the first ``max_filters`` filters), ``<layer>/drift``, ``<layer>/weight_norm_ratio``,
    ``<layer>/out_channels`` and, where the conv has an activation, ``<layer>/channel_max``,
    ``<layer>/channel_mean_abs``, ``<layer>/dormant``, (ReLU family) ``<layer>/dead`` and,
    in the snapshots that draw the views (the first and every ``views_every``-th),
    ``<layer>/maps`` (the first probe image's feature maps, float16): they are most of
    a file's bytes, and the statistics are what a run's history is read for.
    """
    arrays: dict[str, np.ndarray] = {
        "format": np.array(HISTORY_FORMAT),
        "step": np.array(snapshot.step, dtype=np.int64),
        "layers": np.array(list(snapshot.layers), dtype=np.str_),
    }
    drawn = drawn or {}
    for name, layer in snapshot.layers.items():
        filters = drawn[name] if name in drawn else displayed_filters(layer.weight.numpy(), layer.rgb)
        arrays[f"{name}/filters"] = np.asarray(filters, dtype=np.float32)
        arrays[f"{name}/out_channels"] = np.array(layer.out_channels, dtype=np.int64)
        if name in snapshot.drift:
            arrays[f"{name}/drift"] = snapshot.drift[name].numpy()
            arrays[f"{name}/weight_norm_ratio"] = snapshot.weight_norm_ratio[name].numpy()
        if layer.channel_max is not None and layer.channel_mean_abs is not None and layer.maps is not None:
            arrays[f"{name}/channel_max"] = layer.channel_max.numpy()
            arrays[f"{name}/channel_mean_abs"] = layer.channel_mean_abs.numpy()
            if snapshot.draw_views:
                arrays[f"{name}/maps"] = layer.maps[0].numpy().astype(np.float16)
        if name in snapshot.dormant_filters:
            arrays[f"{name}/dormant"] = np.array(snapshot.dormant_filters[name], dtype=np.int64)
        if name in snapshot.dead_filters:
            arrays[f"{name}/dead"] = np.array(snapshot.dead_filters[name], dtype=np.int64)
    return arrays


class HistoryWriter:
    """Saves each snapshot as ``<directory>/step_<step>.npz``.

    A file appears whole or not at all: it is built in memory (one write instead of a seek
    per array) and renamed into place, so a reader never sees half of one.

    Args:
        directory: created when missing.
    """

    def __init__(self, directory: Union[str, os.PathLike]) -> None:
        self.directory = Path(directory)

    def write(self, snapshot: Snapshot, drawn: Optional[Mapping[str, np.ndarray]] = None) -> Path:
        """Save one snapshot; ``drawn`` as in :func:`history_arrays`."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"step_{snapshot.step:08d}.npz"
        buffer = io.BytesIO()
        np.savez(buffer, **history_arrays(snapshot, drawn))
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(buffer.getbuffer())
        os.replace(partial, path)
        return path


def load_history(path: Union[str, os.PathLike]) -> dict[str, np.ndarray]:
    """Read one history file back (``allow_pickle=False``).

    Raises:
        ValueError: if the file is not a lightning_filterviz history file.
    """
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    if str(arrays.get("format", "")) != HISTORY_FORMAT:
        raise ValueError(f"{path} is not a lightning_filterviz history file (no format {HISTORY_FORMAT!r}).")
    return arrays


def resolve_filmstrip_layers(requested: Optional[Sequence[str]], watched: Sequence[str]) -> list[str]:
    """``None``: the first watched conv; otherwise names or fnmatch patterns among the watched."""
    import fnmatch

    if requested is None:
        return list(watched[:1])
    return [
        name for name in watched if any(name == pattern or fnmatch.fnmatchcase(name, pattern) for pattern in requested)
    ]
