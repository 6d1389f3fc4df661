"""What each filter responds to: peak patches and feature maps layer by layer, drawn.

:func:`peak_patches` crops, for each filter, its receptive field (measured by
:func:`lightning_filterviz.capture.receptive_fields.receptive_field`) around the position of the
filter's strongest activation on the probe; :func:`response_grid` draws each filter beside
its patch. :func:`through_the_layers` shows one probe image's busiest feature maps from the
first layer to the deepest.

NumPy only (like :mod:`lightning_filterviz.drawing.render`), so it runs on the background
writer's thread and in the report; tensors are converted at the start, through their own
methods (no torch import).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

import numpy as np

from lightning_filterviz.core.records import ReceptiveField
from lightning_filterviz.core.filters import displayed_filters, normalize_filters
from lightning_filterviz.core.tiles import (
    BACKGROUND_COLOUR,
    BACKGROUND_INDEX,
    COLORMAP_LEVELS,
    FRAME_COLOUR,
    FRAME_INDEX,
    GRID_PADDING,
    NON_FINITE_COLOUR,
    NON_FINITE_INDEX,
    OUTSIDE_GREY,
    PANEL_PADDING,
    IndexedImage,
    colormap_palette,
    drawn_channels,
    finite_unit,
    frame_kinds,
    frame_tiles,
    non_finite_pixels,
    resize_nearest,
    rgb_colour,
    tile_grid,
    to_uint8,
)

__all__ = ["pair_columns", "peak_indices", "peak_patches", "response_grid", "through_the_layers"]

if TYPE_CHECKING:
    from torch import Tensor

ArrayLike = Union["Tensor", np.ndarray]


def peak_indices(activation: Tensor) -> Tensor:
    """Each filter's strongest position over a batch of activations.

    Args:
        activation: ``(N, F, H_out, W_out)`` activations of one conv (or of its activation
            function).

    Returns:
        ``(F,)`` long tensor: per filter, the flat index into ``(N, H_out, W_out)`` of its
        maximum, as :func:`peak_patches` takes it.
    """
    channels = activation.shape[1]
    return activation.detach().transpose(0, 1).reshape(channels, -1).argmax(dim=1)


def peak_patches(
    images: ArrayLike,
    peak_index: ArrayLike,
    output_hw: tuple[int, int],
    field: ReceptiveField,
    patch_pixels: int = 32,
) -> np.ndarray:
    """Crop, for each filter, the receptive field around its strongest activation.

    NumPy only: tensors are converted at the start, so this can run on a background thread.

    Args:
        images: the probe images ``(N, C, H, W)``, any ``C``: drawn from the first channel in
            grey for 1 or 2 channels, from the first three as RGB for 3 or more (see
            :func:`~lightning_filterviz.core.tiles.drawn_channels`).
        peak_index: ``(F,)`` per filter, the flat index into ``(N, H_out, W_out)`` of its
            maximal activation (see :func:`peak_indices`).
        output_hw: ``(H_out, W_out)``, the conv's output size.
        field: the conv's receptive field.
        patch_pixels: side of each returned patch in pixels.

    Returns:
        ``(F, patch_pixels, patch_pixels, 3)`` ``uint8``: each patch is the field's box cut
        from that probe image (the part outside the image grey), min-max normalized over the
        finite values of the part inside, grey images repeated to RGB, resized (nearest) to
        ``patch_pixels``; a pixel with a NaN or an Inf in any channel is magenta
        (:data:`~lightning_filterviz.core.tiles.NON_FINITE_COLOUR`). Row ``i`` of a patch
        shows box row ``i * box_height // patch_pixels``, and likewise for columns.

    Raises:
        ValueError: for images that are not ``(N, C, H, W)``, a non-positive
            ``patch_pixels``, or a peak index outside ``(N, H_out, W_out)``.
    """
    images = _to_numpy(images).astype(np.float32, copy=False)
    indices = _to_numpy(peak_index).astype(np.int64, copy=False).reshape(-1)
    if images.ndim != 4 or images.shape[1] < 1:
        raise ValueError(f"peak_patches needs (N, C, H, W) images, got shape {images.shape}.")
    if patch_pixels < 1:
        raise ValueError(f"patch_pixels must be positive, got {patch_pixels}.")
    count, _, height, width = images.shape
    positions = count * output_hw[0] * output_hw[1]
    if indices.size and (indices.min() < 0 or indices.max() >= positions):
        raise ValueError(f"Peak indices must lie in [0, {positions}) for {count} images of {output_hw} outputs.")
    bad_pixels = non_finite_pixels(images)
    images = drawn_channels(images)
    marked = rgb_colour(NON_FINITE_COLOUR)
    patches = np.empty((len(indices), patch_pixels, patch_pixels, 3), dtype=np.uint8)
    for filter_index, (image, y, x) in enumerate(zip(*np.unravel_index(indices, (count, *output_hw)))):
        top, left, bottom, right = field.box(int(y), int(x))
        patch = np.full((3, bottom - top, right - left), OUTSIDE_GREY, dtype=np.float32)
        bad = np.zeros((bottom - top, right - left), dtype=bool)
        inner_top, inner_left = max(top, 0), max(left, 0)
        inner_bottom, inner_right = min(bottom, height), min(right, width)
        if inner_bottom > inner_top and inner_right > inner_left:
            rows, columns = slice(inner_top - top, inner_bottom - top), slice(inner_left - left, inner_right - left)
            crop = images[image, :, inner_top:inner_bottom, inner_left:inner_right]
            patch[:, rows, columns] = finite_unit(crop[None])[0]
            bad[rows, columns] = bad_pixels[image, inner_top:inner_bottom, inner_left:inner_right]
        patches[filter_index] = to_uint8(resize_nearest(patch.transpose(1, 2, 0), patch_pixels, patch_pixels))
        if bad.any():
            patches[filter_index][resize_nearest(bad, patch_pixels, patch_pixels)] = marked
    return patches


def response_grid(
    weight: ArrayLike, rgb: bool, patches: np.ndarray, columns: Optional[int] = None
) -> np.ndarray:
    """Draw each filter beside the image patch it responds to most.

    Each pair is the filter (normalized on its own, as ``weight_grid``'s ``"filter"``
    mode draws it, resized nearest to the patch size) and its peak patch, each in a
    one-pixel grey frame, ``GRID_PADDING`` apart; pairs are ``PANEL_PADDING`` apart on a
    white background, laid out row by row.

    Args:
        weight: ``(F, C_in, kH, kW)`` filters; the first ``len(patches)`` are drawn.
        rgb: whether the filters see an RGB image (drawn in colour); otherwise each filter
            shows its strongest input-channel slice in grey.
        patches: ``(P, h, w, 3)`` ``uint8`` peak patches, see :func:`peak_patches`.
        columns: pairs per row; default a near-square image.

    Returns:
        An ``(H, W, 3)`` ``uint8`` image.

    Raises:
        ValueError: with no patches, fewer filters than patches, or patches that are not
            ``(P, h, w, 3)``.
    """
    patches = np.asarray(patches, dtype=np.uint8)
    if patches.ndim != 4 or patches.shape[-1] != 3:
        raise ValueError(f"response_grid needs (P, h, w, 3) patches, got shape {patches.shape}.")
    weight = _to_numpy(weight).astype(np.float32, copy=False)
    count, height, width = patches.shape[:3]
    if count == 0:
        raise ValueError("response_grid needs at least one patch.")
    if len(weight) < count:
        raise ValueError(f"response_grid got {count} patches but only {len(weight)} filters.")
    shown = displayed_filters(np.nan_to_num(weight[:count], nan=0.0, posinf=0.0, neginf=0.0), rgb)
    filters = to_uint8(normalize_filters(shown, "filter")).transpose(0, 2, 3, 1)
    if filters.shape[-1] == 1:
        filters = np.repeat(filters, 3, axis=-1)
    filters = resize_nearest(filters, height, width, first_axis=1)
    frame = {FRAME_INDEX: rgb_colour(FRAME_COLOUR)}
    kinds = frame_kinds(count)
    background = rgb_colour(BACKGROUND_COLOUR)
    framed_filters, framed_patches = frame_tiles(filters, kinds, frame), frame_tiles(patches, kinds, frame)
    gap = np.broadcast_to(background, (count, framed_patches.shape[1], GRID_PADDING, 3))
    pair_tiles = np.concatenate([framed_filters, gap, framed_patches], axis=2)
    nrow = columns if columns is not None else pair_columns(count)
    return tile_grid(pair_tiles, max(1, nrow), PANEL_PADDING, background)


def pair_columns(count: int) -> int:
    """Columns for a near-square :func:`response_grid` of ``count`` pairs (each twice as wide as tall)."""
    return max(1, math.ceil(math.sqrt(count / 2)))


def through_the_layers(
    maps: Mapping[str, ArrayLike], channels: int = 4, height: int = 48, colormap: str = "viridis"
) -> IndexedImage:
    """One probe image's busiest feature maps, one column per layer, early layers left.

    Per layer the ``channels`` channels with the largest mean activation are shown, the
    largest at the top, normalized together (min..max over the shown channels of that
    layer) and coloured with ``colormap``; a NaN or Inf value is drawn magenta. Tiles are ``GRID_PADDING`` white pixels apart;
    a layer with fewer channels leaves white space below its column.

    Args:
        maps: layer name -> ``(C, H, W)`` feature maps of one probe image, in the order the
            columns are drawn.
        channels: channels shown per layer.
        height: side of each (square) tile; maps are resized to it with nearest neighbour.
        colormap: a matplotlib colormap name.

    Returns:
        An :class:`~lightning_filterviz.core.tiles.IndexedImage` (``.to_rgb()`` for pixels) of
        ``min(channels, most channels of a layer)`` rows and ``len(maps)`` columns of tiles.

    Raises:
        ValueError: with no layers, ``channels`` or ``height`` below 1, or a map that is
            not ``(C, H, W)``.
    """
    if not maps:
        raise ValueError("through_the_layers needs at least one layer.")
    if channels < 1 or height < 1:
        raise ValueError(f"channels and height must be positive, got {channels} and {height}.")
    columns = []
    for name, layer_maps in maps.items():
        values = _to_numpy(layer_maps).astype(np.float32, copy=False)
        if values.ndim != 3 or values.shape[0] == 0:
            raise ValueError(f"through_the_layers needs (C, H, W) maps; layer {name!r} has shape {values.shape}.")
        finite = np.isfinite(values)
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        busiest = np.argsort(-values.mean(axis=(1, 2)), kind="stable")[:channels]
        shown = normalize_filters(values[busiest][None], "layer")[0]
        levels = np.rint(shown * (COLORMAP_LEVELS - 1)).astype(np.uint8)
        levels[~finite[busiest]] = NON_FINITE_INDEX  # a NaN or Inf value in the palette's non-finite colour
        columns.append([resize_nearest(level[..., None], height, height) for level in levels])
    rows = max(len(column) for column in columns)
    # A palette image: a third of the bytes of RGB, and the colormap is its palette.
    background = np.array([BACKGROUND_INDEX], dtype=np.uint8)
    blank = np.broadcast_to(background, (height, height, 1))
    tiles = [column[row] if row < len(column) else blank for row in range(rows) for column in columns]
    grid = tile_grid(np.stack(tiles), len(columns), GRID_PADDING, background)
    return IndexedImage(np.ascontiguousarray(grid[..., 0]), colormap_palette(colormap))


# ---------------------------------------------------------------- helpers


def _to_numpy(values: Any) -> np.ndarray:
    # A tensor is read through its own methods, so that drawing imports no torch.
    if hasattr(values, "detach"):
        values = values.detach()
        if str(values.dtype) == "torch.bfloat16":  # NumPy has no bfloat16
            values = values.float()
        return values.cpu().numpy()
    return np.asarray(values)
