"""Image primitives every picture is drawn with: tiles, frames, grids and colours.

NumPy only (see :mod:`~lightning_filterviz.drawing.render` for why). Grids follow
:func:`torchvision.utils.make_grid`'s layout; each tile gets a one-pixel frame whose colour
says what the tile is (grey, red for dead, magenta for NaN or Inf). A palette image
(:class:`IndexedImage`) keeps the colormap's levels first, then those frame colours.

Input images (the probe, peak patches, dataset examples) are drawn from their first
channel in grey when they have one or two, from their first three as RGB when they have
three or more (:func:`drawn_channels`); a pixel with a NaN or an Inf in any channel is
drawn magenta (:data:`NON_FINITE_COLOUR`), and left out of the image's normalization.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple, Sequence, Union

import numpy as np

__all__ = [
    "BACKGROUND_COLOUR",
    "BACKGROUND_INDEX",
    "COLORMAP_LEVELS",
    "DEAD_COLOUR",
    "DEAD_INDEX",
    "FRAME_COLOUR",
    "FRAME_INDEX",
    "FRAME_PIXELS",
    "GRID_PADDING",
    "Image",
    "IndexedImage",
    "NON_FINITE_COLOUR",
    "NON_FINITE_INDEX",
    "OUTSIDE_GREY",
    "PANEL_PADDING",
    "colormap_palette",
    "drawn_channels",
    "drawn_channels_text",
    "finite_unit",
    "image_tiles",
    "non_finite_pixels",
    "outside_the_image",
    "frame_kinds",
    "frame_tiles",
    "resize_nearest",
    "rgb_colour",
    "square_columns",
    "tile_grid",
    "tile_origin",
    "to_uint8",
    "upscale",
]

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
FRAME_INDEX, DEAD_INDEX, NON_FINITE_INDEX, BACKGROUND_INDEX = 252, 253, 254, 255


class IndexedImage(NamedTuple):
    """A palette image: ``indices`` ``(H, W)`` ``uint8`` into ``palette`` ``(256, 3)`` ``uint8``."""

    indices: np.ndarray
    palette: np.ndarray

    def to_rgb(self) -> np.ndarray:
        """The same image as an ``(H, W, 3)`` ``uint8`` array."""
        return self.palette[self.indices]


Image = Union[np.ndarray, IndexedImage]


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


@lru_cache(maxsize=8)
def colormap_palette(colormap: str) -> np.ndarray:
    """256 RGB colours: the colormap's levels, then frame, dead, non-finite and background."""
    specials = [rgb_colour(colour) for colour in (FRAME_COLOUR, DEAD_COLOUR, NON_FINITE_COLOUR, BACKGROUND_COLOUR)]
    palette = np.concatenate([_colormap_levels(colormap, COLORMAP_LEVELS), np.stack(specials)])
    palette.setflags(write=False)  # shared by every image drawn with this colormap
    return palette


@lru_cache(maxsize=8)
def _colormap_levels(name: str, levels: int) -> np.ndarray:
    import matplotlib

    colours = matplotlib.colormaps[name](np.linspace(0.0, 1.0, levels))[:, :3]
    return to_uint8(colours)


def rgb_colour(colour: Sequence[float]) -> np.ndarray:
    """An RGB colour given in [0, 1] as 3 ``uint8`` values."""
    return to_uint8(np.asarray(colour, dtype=np.float32))


def drawn_channels(images: np.ndarray) -> np.ndarray:
    """The channels ``(N, C, H, W)`` images are drawn with: all of them for 1 (grey) or 3
    (RGB), the first for 2 (an image and its mask: the image, in grey), the first three for
    more (RGBA, multispectral bands: as RGB). Statistics always use every channel."""
    channels = images.shape[1]
    if channels in (1, 3):
        return images
    return images[:, :1] if channels < 3 else images[:, :3]


def drawn_channels_text(channels: int) -> str:
    """How images of ``channels`` channels are drawn (see :func:`drawn_channels`), in words."""
    if channels in (1, 3):
        return "drawn in grey" if channels == 1 else "drawn as RGB"
    shown = "the first channel in grey" if channels < 3 else "the first three as RGB"
    return f"the probe images, peak patches and dataset examples show {shown} (every statistic uses all {channels})"


def non_finite_pixels(images: np.ndarray) -> np.ndarray:
    """``(N, C, H, W)`` images to ``(N, H, W)``: where a pixel holds a NaN or an Inf in any
    channel (the hidden ones too: the statistics saw them)."""
    return ~np.isfinite(images).all(axis=1)


def finite_unit(values: np.ndarray) -> np.ndarray:
    """Each item along the first axis min-max normalized to [0, 1] over its finite values,
    in float32; non-finite values become 0, a constant (or wholly non-finite) item 0. Where
    every value is finite this is ``normalize_filters(values, "filter")`` to the bit."""
    values = np.asarray(values, dtype=np.float32)
    finite = np.isfinite(values)
    flat, flat_finite = values.reshape(len(values), -1), finite.reshape(len(values), -1)
    shape = (-1,) + (1,) * (values.ndim - 1)
    low = np.where(flat_finite, flat, np.inf).min(axis=1, initial=np.inf).reshape(shape)
    high = np.where(flat_finite, flat, -np.inf).max(axis=1, initial=-np.inf).reshape(shape)
    if not finite.all():  # rare: a copy only then
        values = np.where(finite, values, np.float32(0.0))
        empty = ~np.isfinite(low)
        low, high = np.where(empty, 0.0, low).astype(np.float32), np.where(empty, 0.0, high).astype(np.float32)
    span = np.asarray(high - low, dtype=np.float32)
    safe_span = np.where(span > 0, span, 1.0)
    return np.where(span > 0, (values - low) / safe_span, 0.0).astype(np.float32)


def image_tiles(images: np.ndarray) -> np.ndarray:
    """``(N, C, H, W)`` images to ``(N, H, W, 3)`` ``uint8`` tiles: the channels
    :func:`drawn_channels` picks, each image min-max normalized over its finite values, grey
    repeated to RGB, and every pixel with a NaN or an Inf in any channel in
    :data:`NON_FINITE_COLOUR` (magenta)."""
    images = np.asarray(images, dtype=np.float32)
    unit = finite_unit(drawn_channels(images))
    tiles = to_uint8(np.repeat(unit, 3, axis=1) if unit.shape[1] == 1 else unit).transpose(0, 2, 3, 1)
    bad = non_finite_pixels(images)
    if bad.any():
        tiles = tiles.copy()
        tiles[bad] = rgb_colour(NON_FINITE_COLOUR)
    return tiles


def outside_the_image(patches: np.ndarray) -> np.ndarray:
    """``(N, C, h, w)`` patches to ``(N, h, w)``: the edge rows and columns that are NaN in
    every channel and pixel: where a context window of a dataset example reaches past
    the image (the image is a rectangle inside the window; the capture fills the rest with
    NaN). A NaN of the image's own inside it is not counted."""
    empty = np.isnan(patches).all(axis=1)  # (N, h, w)
    rows, columns = empty.all(axis=2), empty.all(axis=1)  # (N, h), (N, w)
    return _from_the_edges(rows)[:, :, None] | _from_the_edges(columns)[:, None, :]


def _from_the_edges(empty: np.ndarray) -> np.ndarray:
    """``(N, P)`` per-line emptiness to the lines in the unbroken runs of empty ones that
    start at either edge."""
    from_start = np.logical_and.accumulate(empty, axis=1)
    from_end = np.logical_and.accumulate(empty[:, ::-1], axis=1)[:, ::-1]
    return from_start | from_end
