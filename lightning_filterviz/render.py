"""Normalization, tiling and colour maps: captured tensors in, ``uint8`` images out.

Knows no logger. Every image is a ``(3, H, W)`` ``uint8`` tensor. Tiles are laid out by
:func:`torchvision.utils.make_grid`; each tile gets a one-pixel frame, red for a dead
filter and grey otherwise, and small kernels are upscaled (nearest) to be visible.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import make_grid

WeightNormalization = Literal["filter", "layer", "symmetric"]
WEIGHT_NORMALIZATIONS = ("filter", "layer", "symmetric")

# A 3x3 kernel is drawn at least this many pixels wide.
MIN_WEIGHT_TILE_PIXELS = 24
MIN_MAP_TILE_PIXELS = 16
FRAME_PIXELS = 1
GRID_PADDING = 2
PANEL_PADDING = 6
FRAME_COLOUR = (0.35, 0.35, 0.35)
DEAD_COLOUR = (1.0, 0.0, 0.0)
NON_FINITE_COLOUR = (1.0, 0.0, 1.0)
BACKGROUND = 1.0


def weight_grid(
    weight: Tensor,
    normalization: WeightNormalization = "filter",
    symmetric_range: Optional[float] = None,
    marked: Sequence[int] = (),
) -> Tensor:
    """Draw a conv layer's filters as one grid image.

    Filters with 3 input channels are drawn in RGB. Filters with one input channel are
    drawn in grey. For any other number of input channels, each filter shows its
    strongest input-channel slice (largest L2 norm) in grey, since a mean over input
    channels cancels patterns of opposite sign.

    Args:
        weight: ``(F, C_in, kH, kW)`` filters.
        normalization: ``"filter"`` maps each filter's own min..max to 0..1; ``"layer"``
            uses the min..max over all drawn filters; ``"symmetric"`` maps
            ``-symmetric_range..symmetric_range`` to 0..1, a fixed range that shows growth
            in magnitude from one snapshot to the next.
        symmetric_range: the half-range for ``"symmetric"``; default the largest ``|w|``.
        marked: filter indices to frame in red (dead filters).

    Returns:
        A ``(3, H, W)`` ``uint8`` image.
    """
    weight = weight.float()
    non_finite = _non_finite_indices(weight)
    shown = displayed_filters(torch.nan_to_num(weight, nan=0.0, posinf=0.0, neginf=0.0))
    unit = normalize_filters(shown, normalization, symmetric_range)
    tiles = unit.expand(-1, 3, -1, -1) if unit.shape[1] == 1 else unit
    tiles = upscale(tiles, MIN_WEIGHT_TILE_PIXELS)
    return to_uint8(grid_of_tiles(frame_tiles(tiles, marked, non_finite), nrow=square_columns(len(tiles))))


def activation_grid(maps: Tensor, marked: Sequence[int] = (), colormap: str = "viridis") -> Tensor:
    """Draw feature maps: one panel per probe image, each a grid of its channels.

    Values are normalized over the whole layer (not per channel), so a silent channel
    looks silent next to a busy one.

    Args:
        maps: ``(images, channels, H, W)`` activations.
        marked: channel indices to frame in red (dead filters).
        colormap: a matplotlib colormap name.

    Returns:
        A ``(3, H, W)`` ``uint8`` image.
    """
    maps = maps.float()
    non_finite = _non_finite_indices(maps.transpose(0, 1))
    maps = torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
    images, channels = maps.shape[:2]
    unit = _scale_to_unit(maps, maps.amin(), maps.amax())
    coloured = apply_colormap(unit.reshape(images * channels, *unit.shape[2:]), colormap)
    coloured = upscale(coloured, MIN_MAP_TILE_PIXELS)
    coloured = coloured.reshape(images, channels, *coloured.shape[1:])
    panels = [grid_of_tiles(frame_tiles(panel, marked, non_finite), nrow=square_columns(channels)) for panel in coloured]
    if len(panels) == 1:
        return to_uint8(panels[0])
    return to_uint8(make_grid(panels, nrow=len(panels), padding=PANEL_PADDING, pad_value=BACKGROUND))


def displayed_filters(weight: Tensor) -> Tensor:
    """The part of each filter that is drawn: all 3 channels for RGB, else one grey slice."""
    if weight.shape[1] in (1, 3):
        return weight
    strongest = weight.flatten(2).norm(dim=2).argmax(dim=1)
    return weight[torch.arange(len(weight)), strongest].unsqueeze(1)


def normalize_filters(
    weight: Tensor, normalization: WeightNormalization = "filter", symmetric_range: Optional[float] = None
) -> Tensor:
    """Map filter values to [0, 1] (see :func:`weight_grid` for the modes)."""
    weight = torch.nan_to_num(weight, nan=0.0, posinf=0.0, neginf=0.0)
    if normalization == "filter":
        low = weight.flatten(1).amin(dim=1).view(-1, 1, 1, 1)
        high = weight.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
        return _scale_to_unit(weight, low, high)
    if normalization == "layer":
        return _scale_to_unit(weight, weight.amin(), weight.amax())
    if normalization == "symmetric":
        half_range = symmetric_range if symmetric_range is not None else float(weight.abs().amax())
        half_range = max(half_range, 1e-12)
        return ((weight / half_range + 1.0) / 2.0).clamp(0.0, 1.0)
    raise ValueError(f"Unknown weight normalization {normalization!r}; use one of {WEIGHT_NORMALIZATIONS}.")


def _scale_to_unit(values: Tensor, low: Tensor, high: Tensor) -> Tensor:
    span = high - low
    # A constant filter (or layer) has no pattern to show: draw it as 0 rather than divide by 0.
    safe_span = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (values - low) / safe_span, torch.zeros_like(values))


def apply_colormap(unit: Tensor, colormap: str = "viridis") -> Tensor:
    """Colour ``(N, H, W)`` values in [0, 1] with a matplotlib colormap: ``(N, 3, H, W)``."""
    lut = _colormap_table(colormap)
    indices = (unit.clamp(0.0, 1.0) * (len(lut) - 1)).round().long()
    return lut[indices].permute(0, 3, 1, 2)


@lru_cache(maxsize=8)
def _colormap_table(name: str) -> Tensor:
    import matplotlib

    colormap = matplotlib.colormaps[name]
    return torch.tensor(colormap(torch.linspace(0, 1, 256).numpy())[:, :3], dtype=torch.float32)


def upscale(tiles: Tensor, min_pixels: int) -> Tensor:
    """Nearest-neighbour upscaling by a whole factor so the shorter side reaches ``min_pixels``."""
    factor = math.ceil(min_pixels / min(tiles.shape[-2:]))
    if factor <= 1:
        return tiles
    return F.interpolate(tiles, scale_factor=factor, mode="nearest")


def frame_tiles(tiles: Tensor, marked: Sequence[int] = (), non_finite: Sequence[int] = ()) -> Tensor:
    """Surround each ``(3, h, w)`` tile with a thin frame: red for ``marked`` (dead) tiles,
    magenta for tiles whose values held NaN or Inf, grey otherwise."""
    count, _, height, width = tiles.shape
    framed = torch.empty(count, 3, height + 2 * FRAME_PIXELS, width + 2 * FRAME_PIXELS)
    framed[:] = torch.tensor(FRAME_COLOUR).view(1, 3, 1, 1)
    for indices, colour in ((marked, DEAD_COLOUR), (non_finite, NON_FINITE_COLOUR)):
        indices = [index for index in indices if 0 <= index < count]
        if indices:
            framed[indices] = torch.tensor(colour).view(1, 3, 1, 1)
    framed[:, :, FRAME_PIXELS : FRAME_PIXELS + height, FRAME_PIXELS : FRAME_PIXELS + width] = tiles
    return framed


def _non_finite_indices(values: Tensor) -> list[int]:
    """Indices along the first dimension whose values hold a NaN or an Inf."""
    return torch.nonzero(~torch.isfinite(values.flatten(1)).all(dim=1)).flatten().tolist()


def grid_of_tiles(tiles: Tensor, nrow: int) -> Tensor:
    if len(tiles) == 1:
        # make_grid returns a lone tile unpadded; keep the layout of every other grid.
        return F.pad(tiles[0], (GRID_PADDING,) * 4, value=BACKGROUND)
    return make_grid(tiles, nrow=nrow, padding=GRID_PADDING, pad_value=BACKGROUND)


def square_columns(count: int) -> int:
    """Columns for a near-square grid of ``count`` tiles."""
    return max(1, math.ceil(math.sqrt(count)))


def tile_origin(index: int, tile_height: int, tile_width: int, nrow: int) -> tuple[int, int]:
    """Top-left pixel of tile ``index`` inside its frame, in a grid drawn by :func:`grid_of_tiles`."""
    row, column = divmod(index, nrow)
    top = GRID_PADDING + row * (tile_height + 2 * FRAME_PIXELS + GRID_PADDING) + FRAME_PIXELS
    left = GRID_PADDING + column * (tile_width + 2 * FRAME_PIXELS + GRID_PADDING) + FRAME_PIXELS
    return top, left


def to_uint8(image: Tensor) -> Tensor:
    return (image.clamp(0.0, 1.0) * 255).round().to(torch.uint8)


def dead_filter_table(dead: dict[str, list[int]], out_channels: dict[str, int]) -> str:
    """A Markdown table of layer -> dead filter indices, for TensorBoard's text tab."""
    rows = ["| layer | dead | indices |", "|---|---|---|"]
    for layer, indices in dead.items():
        listed = ", ".join(str(index) for index in indices) if indices else "none"
        rows.append(f"| {layer} | {len(indices)} / {out_channels.get(layer, '?')} | {listed} |")
    return "\n".join(rows)
