"""Normalization, tiling and colour maps: captured tensors in, ``uint8`` images out.

Knows no logger. Rendering runs on the background writer's thread, so it is written in
NumPy: a torch op on a second thread starts a second OpenMP team, whose spinning
threads take CPU from training on a small machine.

Filter grids are ``(H, W, 3)`` ``uint8`` arrays; feature-map grids are
:class:`IndexedImage` (colormap levels plus a 256-colour palette), which encode to PNG
files a third the size of RGB ones. Tiles are laid out as :func:`torchvision.utils.make_grid`
lays them out; each tile gets a one-pixel frame: red for a dead filter, magenta where
values were NaN or Inf, grey otherwise. Small kernels are upscaled (nearest) to be seen.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Literal, NamedTuple, Optional, Sequence, Union

import numpy as np

__all__ = [
    "BACKGROUND_COLOUR",
    "COLORMAP_LEVELS",
    "DEAD_COLOUR",
    "FILMSTRIP_TILE_PIXELS",
    "FRAME_COLOUR",
    "FRAME_PIXELS",
    "GRID_PADDING",
    "Image",
    "IndexedImage",
    "NON_FINITE_COLOUR",
    "OUTSIDE_GREY",
    "PANEL_PADDING",
    "SIGNED_COLORMAP",
    "WEIGHT_NORMALIZATIONS",
    "WeightNormalization",
    "activation_grid",
    "displayed_filters",
    "drift_strip",
    "filmstrip",
    "frame_kinds",
    "frame_tiles",
    "normalize_filters",
    "probe_image_grid",
    "resize_nearest",
    "tile_grid",
    "tile_origin",
    "to_uint8",
    "weight_grid",
]

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
BACKGROUND_COLOUR = (1.0, 1.0, 1.0)
# The grey (in 0..1) of patch pixels where a receptive field reaches past the image.
OUTSIDE_GREY = 0.5
# Palette of feature-map images: the colormap's levels first, then frames and background.
COLORMAP_LEVELS = 252
# Diverging, white at zero: for a conv's output before any activation, which has a sign.
SIGNED_COLORMAP = "RdBu_r"
FRAME_INDEX, DEAD_INDEX, NON_FINITE_INDEX, BACKGROUND_INDEX = 252, 253, 254, 255


class IndexedImage(NamedTuple):
    """A palette image: ``indices`` ``(H, W)`` ``uint8`` into ``palette`` ``(256, 3)`` ``uint8``."""

    indices: np.ndarray
    palette: np.ndarray

    def to_rgb(self) -> np.ndarray:
        """The same image as an ``(H, W, 3)`` ``uint8`` array."""
        return self.palette[self.indices]


Image = Union[np.ndarray, IndexedImage]


def weight_grid(
    weight: Any,
    normalization: WeightNormalization = "filter",
    symmetric_range: Optional[float] = None,
    marked: Sequence[int] = (),
    rgb: Optional[bool] = None,
) -> Image:
    """Draw a conv layer's filters as one grid image.

    Filters that look at an RGB image are drawn in colour. Filters with one input channel
    (depthwise convs too) are drawn in grey. For any other number of input channels,
    each filter shows its strongest input-channel slice (largest L2 norm) in grey, since
    a mean over input channels cancels patterns of opposite sign.

    Args:
        weight: ``(F, C_in, kH, kW)`` filters (a CPU tensor or an array), or what
            :func:`displayed_filters` returns for them.
        normalization: ``"filter"`` maps each filter's own min..max to 0..1; ``"layer"``
            uses the min..max over all drawn filters; ``"symmetric"`` maps
            ``-symmetric_range..symmetric_range`` to 0..1, a fixed range that shows growth
            in magnitude from one snapshot to the next.
        symmetric_range: the half-range for ``"symmetric"``; default the largest ``|w|``.
        marked: filter indices to frame in red (dead filters).
        rgb: whether the 3 input channels are an image's RGB; default: exactly 3 input
            channels. A grouped conv with 3 channels per group is not RGB.

    Returns:
        An ``(H, W, 3)`` ``uint8`` image for RGB filters; an :class:`IndexedImage` with a
        grey palette for the others.
    """
    weight = np.asarray(weight, dtype=np.float32)
    rgb = weight.shape[1] == 3 if rgb is None else rgb
    # The drawn slice of a filter holding NaN or Inf holds one too (see displayed_filters),
    # so the drawn part alone says which filters are not finite, and the output of
    # displayed_filters may be passed in instead of the whole weight.
    shown = displayed_filters(weight, rgb)
    non_finite = _non_finite_indices(shown)
    unit = normalize_filters(shown, normalization, symmetric_range)  # draws NaN and Inf as 0
    kinds = frame_kinds(len(unit), marked, non_finite)
    if unit.shape[1] == 1:
        levels = np.rint(unit[:, 0] * (COLORMAP_LEVELS - 1)).astype(np.uint8)
        return IndexedImage(_indexed_grid(levels, kinds, MIN_WEIGHT_TILE_PIXELS), _palette("gray"))
    tiles = upscale(to_uint8(unit).transpose(0, 2, 3, 1), MIN_WEIGHT_TILE_PIXELS)
    colours = {FRAME_INDEX: FRAME_COLOUR, DEAD_INDEX: DEAD_COLOUR, NON_FINITE_INDEX: NON_FINITE_COLOUR}
    framed = frame_tiles(tiles, kinds, {kind: _rgb(colour) for kind, colour in colours.items()})
    return tile_grid(framed, square_columns(len(tiles)), GRID_PADDING, _rgb(BACKGROUND_COLOUR))


def activation_grid(
    maps: Any, marked: Sequence[int] = (), colormap: str = "viridis", signed: bool = False
) -> IndexedImage:
    """Draw feature maps: one panel per probe image, each a grid of its channels.

    Values are normalized over the whole layer (not per channel), so a silent channel
    looks silent next to a busy one.

    Args:
        maps: ``(images, channels, H, W)`` activations (a CPU tensor or an array).
        marked: channel indices to frame in red (dead filters).
        colormap: a matplotlib colormap name.
        signed: map ``-m .. m`` (``m`` the largest ``|value|``), so that zero is the
            colormap's middle: for a conv's output before any activation, drawn with a
            diverging colormap (:data:`SIGNED_COLORMAP`).

    Returns:
        An :class:`IndexedImage`; ``.to_rgb()`` gives the ``(H, W, 3)`` ``uint8`` pixels.
    """
    maps = np.asarray(maps, dtype=np.float32)
    non_finite = np.flatnonzero(~np.isfinite(maps).all(axis=(0, 2, 3))).tolist()
    if non_finite:  # a copy only when there is something to replace
        maps = np.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
    images, channels = maps.shape[:2]
    low, high = maps.min(), maps.max()
    if signed:
        high = max(float(np.abs(maps).max()), 1e-12)
        low = -high
    levels = _colormap_indices(maps, low, high)
    kinds = frame_kinds(channels, marked, non_finite)
    panels = np.stack([_indexed_grid(image, kinds, MIN_MAP_TILE_PIXELS)[..., None] for image in levels])
    background = np.array([BACKGROUND_INDEX], dtype=np.uint8)
    grid = panels[0] if images == 1 else tile_grid(panels, images, PANEL_PADDING, background)
    return IndexedImage(np.ascontiguousarray(grid[..., 0]), _palette(colormap))


def _colormap_indices(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``low..high`` to colormap levels ``0..COLORMAP_LEVELS - 1`` (all 0 when the range is empty)."""
    span = float(high) - float(low)
    if not span > 0:
        return np.zeros(values.shape, dtype=np.uint8)
    # One temporary, scaled and rounded in place: feature maps are the largest arrays drawn.
    scaled = np.subtract(values, np.float32(low), dtype=np.float32)
    scaled *= np.float32((COLORMAP_LEVELS - 1) / span)
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, COLORMAP_LEVELS - 1, out=scaled)
    return scaled.astype(np.uint8)


def _indexed_grid(levels: np.ndarray, kinds: np.ndarray, min_pixels: int) -> np.ndarray:
    """Grid of ``(N, h, w)`` palette-level tiles with their frames: an ``(H, W)`` index image."""
    tiles = upscale(levels[..., None], min_pixels)
    # In a palette image a frame's colour is its palette index.
    framed = frame_tiles(tiles, kinds, {kind: np.array([kind], dtype=np.uint8) for kind in np.unique(kinds)})
    background = np.array([BACKGROUND_INDEX], dtype=np.uint8)
    return tile_grid(framed, square_columns(len(tiles)), GRID_PADDING, background)[..., 0]


def probe_image_grid(images: Any) -> np.ndarray:
    """The probe's input images, each min-max normalized, side by side: ``(H, W, 3)`` ``uint8``."""
    images = np.nan_to_num(np.asarray(images, dtype=np.float32))
    unit = normalize_filters(images, "filter")
    tiles = to_uint8(np.repeat(unit, 3, axis=1) if unit.shape[1] == 1 else unit[:, :3]).transpose(0, 2, 3, 1)
    return tile_grid(tiles, len(tiles), GRID_PADDING, _rgb(BACKGROUND_COLOUR))


# Filmstrips stay readable (and cheap to write) however long the run: at most this many rows.
FILMSTRIP_MAX_ROWS = 64
FILMSTRIP_TILE_PIXELS = 12
STRIP_CELL_PIXELS = 12


def filmstrip(rows: Sequence[np.ndarray]) -> np.ndarray:
    """One row per snapshot, each showing that snapshot's filters left to right.

    Args:
        rows: per snapshot, ``(F, kh, kw, C)`` ``uint8`` normalized filters (C is 1 or 3).
            Beyond :data:`FILMSTRIP_MAX_ROWS` rows, evenly spaced ones are drawn, always
            with the first and the last.

    Returns:
        An ``(H, W, 3)`` ``uint8`` image.
    """
    if len(rows) > FILMSTRIP_MAX_ROWS:
        chosen = np.unique(np.linspace(0, len(rows) - 1, FILMSTRIP_MAX_ROWS).round().astype(int))
        rows = [rows[index] for index in chosen]
    white = _rgb(BACKGROUND_COLOUR)
    drawn = []
    for row in rows:
        tiles = upscale(np.repeat(row, 3, axis=3) if row.shape[3] == 1 else row, FILMSTRIP_TILE_PIXELS)
        drawn.append(tile_grid(tiles, len(tiles), 1, white))
    width = max(image.shape[1] for image in drawn)
    padded = [np.pad(image, ((0, 0), (0, width - image.shape[1]), (0, 0)), constant_values=255) for image in drawn]
    return np.concatenate(padded, axis=0)


def drift_strip(drift: Any, norm_ratio: Any, colormap: str = "viridis") -> IndexedImage:
    """Two rows of cells, one cell per filter: its drift, and its weight norm beside it.

    The top row maps cosine distance 0..1 from the initial filter (1: turned orthogonal;
    beyond saturates); the bottom row maps the norm relative to the initial one, 0..2
    (the middle colour: unchanged).
    """
    drift = np.clip(np.asarray(drift, dtype=np.float32), 0.0, 1.0)
    ratio = np.clip(np.asarray(norm_ratio, dtype=np.float32) / 2.0, 0.0, 1.0)
    levels = np.rint(np.concatenate([drift, ratio]) * (COLORMAP_LEVELS - 1)).astype(np.uint8)
    cells = np.broadcast_to(levels[:, None, None, None], (len(levels), STRIP_CELL_PIXELS, STRIP_CELL_PIXELS, 1))
    background = np.array([BACKGROUND_INDEX], dtype=np.uint8)
    grid = tile_grid(np.ascontiguousarray(cells), len(drift), 1, background)
    return IndexedImage(np.ascontiguousarray(grid[..., 0]), _palette(colormap))


def displayed_filters(weight: np.ndarray, rgb: bool) -> np.ndarray:
    """The part of each filter that is drawn: all 3 channels for RGB, else one grey slice.

    The grey slice is the input channel with the largest L2 norm; a slice holding NaN or
    Inf is taken before any finite one, so that the drawn part shows the filter is broken.
    The result is its own fixed point: ``displayed_filters(displayed_filters(w, rgb), rgb)``
    is the same array.
    """
    if weight.shape[1] == 1 or (rgb and weight.shape[1] == 3):
        return weight
    flat = weight.reshape(*weight.shape[:2], -1)
    # The largest squared norm is the largest norm; einsum sums the squares without a temporary.
    strength = np.einsum("fcx,fcx->fc", flat, flat)
    broken = _non_finite_indices(flat)
    if broken:  # rare, so the per-slice check runs on the broken filters only
        # A finite slice whose squares overflow stays below a non-finite one.
        np.minimum(strength, np.finfo(strength.dtype).max, out=strength)
        strength[broken] = np.where(np.isfinite(flat[broken]).all(axis=2), strength[broken], np.inf)
    strongest = strength.argmax(axis=1)
    return weight[np.arange(len(weight)), strongest][:, None]


def normalize_filters(
    weight: np.ndarray, normalization: WeightNormalization = "filter", symmetric_range: Optional[float] = None
) -> np.ndarray:
    """Map filter values to [0, 1] (see :func:`weight_grid` for the modes)."""
    weight = np.nan_to_num(np.asarray(weight, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if normalization == "filter":
        flat = weight.reshape(len(weight), -1)
        low = flat.min(axis=1).reshape(-1, 1, 1, 1)
        high = flat.max(axis=1).reshape(-1, 1, 1, 1)
        return _scale_to_unit(weight, low, high)
    if normalization == "layer":
        return _scale_to_unit(weight, weight.min(), weight.max())
    if normalization == "symmetric":
        half_range = symmetric_range if symmetric_range is not None else float(np.abs(weight).max())
        half_range = max(half_range, 1e-12)
        return np.clip((weight / half_range + 1.0) / 2.0, 0.0, 1.0)
    raise ValueError(f"Unknown weight normalization {normalization!r}; use one of {WEIGHT_NORMALIZATIONS}.")


def _scale_to_unit(values: np.ndarray, low: Any, high: Any) -> np.ndarray:
    span = np.asarray(high - low, dtype=np.float32)
    # A constant filter (or layer) has no pattern to show: draw it as 0 rather than divide by 0.
    safe_span = np.where(span > 0, span, 1.0)
    return np.where(span > 0, (values - low) / safe_span, 0.0).astype(np.float32)


def resize_nearest(image: np.ndarray, height: int, width: int, first_axis: int = 0) -> np.ndarray:
    """Nearest-neighbour resize along the two axes from ``first_axis`` (rows, then columns):
    output row ``i`` is input row ``i * rows // height``, and likewise for columns."""
    rows = np.arange(height) * image.shape[first_axis] // height
    cols = np.arange(width) * image.shape[first_axis + 1] // width
    return image.take(rows, axis=first_axis).take(cols, axis=first_axis + 1)


def upscale(tiles: np.ndarray, min_pixels: int) -> np.ndarray:
    """Nearest-neighbour upscaling of ``(N, h, w, C)`` tiles by a whole factor to ``min_pixels``."""
    factor = math.ceil(min_pixels / min(tiles.shape[1:3]))
    if factor <= 1:
        return tiles
    return tiles.repeat(factor, axis=1).repeat(factor, axis=2)


def frame_kinds(count: int, marked: Sequence[int] = (), non_finite: Sequence[int] = ()) -> np.ndarray:
    """Per tile, which frame it gets: grey, red for ``marked`` (dead), magenta for NaN/Inf."""
    kinds = np.full(count, FRAME_INDEX, dtype=np.int64)
    for indices, kind in ((marked, DEAD_INDEX), (non_finite, NON_FINITE_INDEX)):
        kinds[[index for index in indices if 0 <= index < count]] = kind
    return kinds


def frame_tiles(tiles: np.ndarray, kinds: np.ndarray, colours: dict[int, np.ndarray]) -> np.ndarray:
    """Surround each ``(h, w, C)`` tile with a thin frame of the colour its kind names."""
    count, height, width, channels = tiles.shape
    framed = np.empty((count, height + 2 * FRAME_PIXELS, width + 2 * FRAME_PIXELS, channels), dtype=tiles.dtype)
    for kind, colour in colours.items():
        framed[kinds == kind] = colour
    framed[:, FRAME_PIXELS : FRAME_PIXELS + height, FRAME_PIXELS : FRAME_PIXELS + width] = tiles
    return framed


def tile_grid(tiles: np.ndarray, nrow: int, padding: int, pad_value: np.ndarray) -> np.ndarray:
    """Lay ``(N, h, w, C)`` tiles out in rows of ``nrow``, with ``make_grid``'s layout.

    One reshape instead of ``make_grid``'s copy per tile: a snapshot has hundreds of tiles.
    """
    count, height, width, channels = tiles.shape
    columns = min(nrow, count)
    rows = math.ceil(count / columns)
    cell_height, cell_width = height + padding, width + padding
    cells = _filled((rows * columns, cell_height, cell_width, channels), pad_value, tiles.dtype)
    cells[:count, padding:, padding:] = tiles
    grid = cells.reshape(rows, columns, cell_height, cell_width, channels).transpose(0, 2, 1, 3, 4)
    image = _filled((rows * cell_height + padding, columns * cell_width + padding, channels), pad_value, tiles.dtype)
    height, width = rows * cell_height, columns * cell_width
    image[:height, :width] = grid.reshape(height, width, channels)
    return image


def _filled(shape: tuple[int, ...], colour: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.all(colour == colour.flat[0]):
        return np.full(shape, colour.flat[0], dtype=dtype)  # one memset instead of a strided copy
    array = np.empty(shape, dtype=dtype)
    array[:] = colour
    return array


def square_columns(count: int) -> int:
    """Columns for a near-square grid of ``count`` tiles."""
    return max(1, math.ceil(math.sqrt(count)))


def tile_origin(index: int, tile_height: int, tile_width: int, nrow: int) -> tuple[int, int]:
    """Top-left pixel of tile ``index`` inside its frame, in a grid of framed tiles."""
    row, column = divmod(index, nrow)
    top = GRID_PADDING + row * (tile_height + 2 * FRAME_PIXELS + GRID_PADDING) + FRAME_PIXELS
    left = GRID_PADDING + column * (tile_width + 2 * FRAME_PIXELS + GRID_PADDING) + FRAME_PIXELS
    return top, left


def to_uint8(unit: np.ndarray) -> np.ndarray:
    """Values in [0, 1] to 0..255, rounding half to even."""
    return np.rint(np.clip(unit, 0.0, 1.0) * 255).astype(np.uint8)


def _non_finite_indices(values: np.ndarray) -> list[int]:
    """Indices along the first axis whose values hold a NaN or an Inf."""
    return np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1)).tolist()


@lru_cache(maxsize=8)
def _palette(colormap: str) -> np.ndarray:
    """256 RGB colours: the colormap's levels, then frame, dead, non-finite and background."""
    specials = [_rgb(colour) for colour in (FRAME_COLOUR, DEAD_COLOUR, NON_FINITE_COLOUR, BACKGROUND_COLOUR)]
    palette = np.concatenate([_colormap_levels(colormap, COLORMAP_LEVELS), np.stack(specials)])
    palette.setflags(write=False)  # shared by every image drawn with this colormap
    return palette


@lru_cache(maxsize=8)
def _colormap_levels(name: str, levels: int) -> np.ndarray:
    import matplotlib

    colours = matplotlib.colormaps[name](np.linspace(0.0, 1.0, levels))[:, :3]
    return to_uint8(colours)


def _rgb(colour: Sequence[float]) -> np.ndarray:
    return to_uint8(np.asarray(colour, dtype=np.float32))
