"""Drawing dataset examples: per filter, its tile and then the examples it fires on most.

Each example is its context window (see
:mod:`~lightning_filterviz.capture.dataset_examples`) with the receptive field outlined in
:data:`OUTLINE_COLOUR`; where the window reaches past the image, a checkerboard of two greys
(a flat grey would read as a grey object). All examples of one filter share one intensity
scale, so that a darker example looks darker and the input's own contrast shows. Tiles are
drawn at the window's own pixels (:func:`example_tiles`, what the history keeps) and shown
scaled by a whole factor to at least :data:`EXAMPLE_TILE_PIXELS`, each with a caption below:
the filter's index under the filter, the rank and the value under each example.

NumPy only, for the writer thread and the report.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from lightning_filterviz.core.filters import displayed_filters, normalize_filters
from lightning_filterviz.core.tiles import (
    BACKGROUND_COLOUR,
    FRAME_COLOUR,
    FRAME_INDEX,
    FRAME_PIXELS,
    GRID_PADDING,
    NON_FINITE_COLOUR,
    drawn_channels,
    frame_kinds,
    frame_tiles,
    non_finite_pixels,
    outside_the_image,
    resize_nearest,
    rgb_colour,
    tile_grid,
    to_uint8,
)
from lightning_filterviz.drawing.text import text_mask

# Each example is shown at least this many pixels a side, its window scaled by a whole factor.
EXAMPLE_TILE_PIXELS = 64
OUTLINE_COLOUR = (1.0, 0.85, 0.0)
# Where a window reaches past the image: squares of these greys, this many window pixels a side.
CHECKER_GREYS = (0.3, 0.55)
CHECKER_PIXELS = 2
# The caption strip below each tile: the font's 11 pixels and a pixel apart.
CAPTION_PIXELS = 12

__all__ = [
    "CAPTION_PIXELS",
    "CHECKER_GREYS",
    "CHECKER_PIXELS",
    "EXAMPLE_TILE_PIXELS",
    "OUTLINE_COLOUR",
    "display_scale",
    "example_tiles",
    "examples_grid",
    "examples_history_image",
    "patch_tiles",
]


def examples_grid(weight: np.ndarray, rgb: bool, tiles: np.ndarray, values: np.ndarray) -> np.ndarray:
    """One row per filter: the filter (normalized on its own), then its examples, strongest
    first, each captioned (the filter's index; each example's rank and value); a missing
    example (fewer distinct places than ``k``) is left blank.

    Args:
        weight: ``(F, C_in, kH, kW)`` filters.
        rgb: whether the filters see an RGB image (drawn in colour).
        tiles: ``(F, k, h, w, 3)`` ``uint8`` drawn examples (see :func:`example_tiles`).
        values: ``(F, k)`` each example's value, ``-inf`` where missing.

    Returns:
        An ``(H, W, 3)`` ``uint8`` image.
    """
    filters, k, height, width = tiles.shape[:4]
    scale = display_scale(height, width)
    shown = displayed_filters(np.nan_to_num(weight[:filters].astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0), rgb)
    filter_tiles = to_uint8(normalize_filters(shown, "filter")).transpose(0, 2, 3, 1)
    filter_tiles = np.repeat(filter_tiles, 3, axis=-1) if filter_tiles.shape[-1] == 1 else filter_tiles
    filter_tiles = resize_nearest(filter_tiles, height * scale, width * scale, first_axis=1)
    rows_of_tiles = np.concatenate([filter_tiles[:, None], _scaled(tiles, scale)], axis=1)
    captions = [[f"filter {index}", *_value_captions(row, width * scale)] for index, row in enumerate(values)]
    return _captioned_grid(rows_of_tiles, captions)


def examples_history_image(tiles: np.ndarray, values: Optional[np.ndarray] = None) -> np.ndarray:
    """One filter's examples over validation runs: ``(runs, k, h, w, 3)`` ``uint8`` tiles, one
    row per run (earliest first), strongest example first, shown as :func:`examples_grid`
    shows them; captioned with rank and value where ``values`` ``(runs, k)`` are given."""
    runs, k, height, width = tiles.shape[:4]
    scale = display_scale(height, width)
    captions = [_value_captions(row, width * scale) for row in values] if values is not None else None
    return _captioned_grid(_scaled(tiles, scale), captions)


def display_scale(height: int, width: int) -> int:
    """The whole factor that shows an ``height`` x ``width`` tile at least
    :data:`EXAMPLE_TILE_PIXELS` a side (1 for larger ones)."""
    return max(1, -(-EXAMPLE_TILE_PIXELS // max(height, width, 1)))


def example_tiles(patches: np.ndarray, found: np.ndarray, boxes: Optional[np.ndarray] = None) -> np.ndarray:
    """``(F, k, C, h, w)`` float context windows (NaN outside the image), ``(F, k)`` whether
    each example exists and ``(F, k, 4)`` the receptive field's box in each window, to
    ``(F, k, h, w, 3)`` ``uint8`` tiles at the window's pixels: each filter's examples on
    one intensity scale (see :func:`patch_tiles`)."""
    if len(patches) == 0:
        return np.zeros((*patches.shape[:2], *patches.shape[3:], 3), dtype=np.uint8)
    return np.stack(
        [
            patch_tiles(patches[index], found[index], None if boxes is None else boxes[index])
            for index in range(len(patches))
        ]
    ).reshape(*patches.shape[:2], *patches.shape[3:], 3)


def patch_tiles(patches: np.ndarray, found: np.ndarray, boxes: Optional[np.ndarray] = None) -> np.ndarray:
    """``(N, C, h, w)`` float patches to ``(N, h, w, 3)`` ``uint8`` tiles on one intensity scale:
    from the smallest to the largest finite pixel inside the image of all ``N`` (all drawn
    channels together); outside the image a checkerboard of :data:`CHECKER_GREYS`, missing
    ones white, and, with ``boxes`` ``(N, 4)`` ``(top, left, height, width)``, an outline in
    :data:`OUTLINE_COLOUR` just around each box (on its own edge where the tile ends there).

    The channels drawn are those of
    :func:`~lightning_filterviz.core.tiles.drawn_channels`: grey for 1 channel, the first
    in grey for 2, the first three as RGB for 3 or more. The part of a window outside the
    image is what the capture filled with NaN: the rows and columns along the patch's
    edges that are NaN in every channel and every pixel (the image is a rectangle inside
    the window). Any other pixel holding a NaN or an Inf is the image's own and drawn
    magenta (:data:`~lightning_filterviz.core.tiles.NON_FINITE_COLOUR`).
    """
    patches = np.asarray(patches, dtype=np.float32)
    found = np.asarray(found, dtype=bool)
    outside = outside_the_image(patches)
    bad = non_finite_pixels(patches) & ~outside
    patches = drawn_channels(patches)
    inside = np.isfinite(patches) & found[:, None, None, None]
    shown = patches[inside]
    low, high = (float(shown.min()), float(shown.max())) if shown.size else (0.0, 0.0)
    # One scale for all: a flat set of patches shows at mid grey, not black.
    unit = (patches - low) / (high - low) if high > low else np.full_like(patches, 0.5)
    tiles = to_uint8(np.where(inside, unit, 0.0)).transpose(0, 2, 3, 1)
    tiles = np.repeat(tiles, 3, axis=-1) if tiles.shape[-1] == 1 else tiles
    tiles = np.where(outside[..., None], _checkerboard(*patches.shape[2:])[None], tiles)
    tiles[bad] = rgb_colour(NON_FINITE_COLOUR)
    if boxes is not None:
        _outline(tiles, np.asarray(boxes), found)
    tiles[~found] = 255
    return tiles


def _checkerboard(height: int, width: int) -> np.ndarray:
    """``(h, w, 3)`` ``uint8`` squares of :data:`CHECKER_GREYS`."""
    rows, columns = np.arange(height)[:, None] // CHECKER_PIXELS, np.arange(width)[None, :] // CHECKER_PIXELS
    greys = to_uint8(np.array(CHECKER_GREYS, dtype=np.float32))
    return np.repeat(greys[(rows + columns) % 2][..., None], 3, axis=-1)


def _outline(tiles: np.ndarray, boxes: np.ndarray, found: np.ndarray) -> None:
    """Draw each found tile's box outline into ``tiles`` ``(N, h, w, 3)``, in place."""
    height, width = tiles.shape[1:3]
    colour = rgb_colour(OUTLINE_COLOUR)
    for tile, (top, left, box_height, box_width), exists in zip(tiles, boxes.tolist(), found):
        if not exists:
            continue
        first_row, last_row = np.clip([top - 1, top + box_height], 0, height - 1)
        first_column, last_column = np.clip([left - 1, left + box_width], 0, width - 1)
        tile[[first_row, last_row], first_column : last_column + 1] = colour
        tile[first_row : last_row + 1, [first_column, last_column]] = colour


def _scaled(tiles: np.ndarray, scale: int) -> np.ndarray:
    """``(..., h, w, 3)`` tiles scaled nearest by a whole ``scale``."""
    return tiles.repeat(scale, axis=-3).repeat(scale, axis=-2)


def _value_captions(values: np.ndarray, width: int) -> list[str]:
    """Per example, ``"<rank> <value>"`` in at most ``width`` pixels; empty where missing."""
    return [_fitting(rank, float(value), width) if np.isfinite(value) else "" for rank, value in enumerate(values, 1)]


def _fitting(rank: int, value: float, width: int) -> str:
    """The most precise of ``value``'s shorter forms that fits ``width`` pixels beside its rank."""
    forms = [f"{rank} {value:{form}}" for form in (".3g", ".2g", ".0e")]
    return next((text for text in forms if text_mask(text).shape[1] <= width), forms[-1])


def _captioned_grid(tiles: np.ndarray, captions: Optional[Sequence[Sequence[str]]]) -> np.ndarray:
    """``(rows, columns, H, W, 3)`` tiles framed, each with its caption below (when
    ``captions`` are given, one per tile), laid out in rows."""
    rows, columns, height, width = tiles.shape[:4]
    framed = frame_tiles(tiles.reshape(-1, height, width, 3), frame_kinds(rows * columns), {FRAME_INDEX: rgb_colour(FRAME_COLOUR)})
    if captions is not None:
        strips = [_caption(text, width + 2 * FRAME_PIXELS) for row in captions for text in row]
        framed = np.concatenate([framed, np.stack(strips)], axis=1)
    return tile_grid(framed, columns, GRID_PADDING, rgb_colour(BACKGROUND_COLOUR))


def _caption(text: str, width: int) -> np.ndarray:
    """A ``(CAPTION_PIXELS, width, 3)`` strip: ``text`` in the frame's grey on the background,
    left-aligned below a pixel's gap (cut at ``width``)."""
    strip = np.zeros((CAPTION_PIXELS, width), dtype=bool)
    if text:
        inked = text_mask(text)[: CAPTION_PIXELS - 1, :width]
        strip[1 : 1 + inked.shape[0], : inked.shape[1]] = inked
    colours = np.stack([rgb_colour(BACKGROUND_COLOUR), rgb_colour(FRAME_COLOUR)])
    return colours[strip.astype(np.int64)]
