"""Drawing dataset examples: per filter, its tile and then the patches it fires on most.

NumPy only, for the writer thread and the report.
"""

from __future__ import annotations

import numpy as np

from lightning_filterviz.core.filters import displayed_filters, normalize_filters
from lightning_filterviz.core.tiles import (
    BACKGROUND_COLOUR,
    FRAME_COLOUR,
    FRAME_INDEX,
    GRID_PADDING,
    NON_FINITE_COLOUR,
    OUTSIDE_GREY,
    drawn_channels,
    frame_kinds,
    frame_tiles,
    non_finite_pixels,
    resize_nearest,
    rgb_colour,
    tile_grid,
    to_uint8,
)

EXAMPLE_TILE_PIXELS = 32  # each example is drawn this size, its field scaled nearest

__all__ = ["EXAMPLE_TILE_PIXELS", "example_tiles", "examples_grid", "examples_history_image", "patch_tiles"]


def examples_grid(weight: np.ndarray, rgb: bool, tiles: np.ndarray) -> np.ndarray:
    """One row per filter: the filter (normalized on its own), then its examples' patches,
    strongest first; a missing example (fewer images than ``k``) is left blank.

    Args:
        weight: ``(F, C_in, kH, kW)`` filters.
        rgb: whether the filters see an RGB image (drawn in colour).
        tiles: ``(F, k, P, P, 3)`` ``uint8`` drawn patches (see :func:`example_tiles`).

    Returns:
        An ``(H, W, 3)`` ``uint8`` image.
    """
    filters, k, size = tiles.shape[:3]
    shown = displayed_filters(np.nan_to_num(weight[:filters].astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0), rgb)
    filter_tiles = to_uint8(normalize_filters(shown, "filter")).transpose(0, 2, 3, 1)
    filter_tiles = np.repeat(filter_tiles, 3, axis=-1) if filter_tiles.shape[-1] == 1 else filter_tiles
    filter_tiles = resize_nearest(filter_tiles, size, size, first_axis=1)
    rows_of_tiles = np.concatenate([filter_tiles[:, None], tiles], axis=1)
    kinds = frame_kinds(filters * (k + 1))
    framed = frame_tiles(rows_of_tiles.reshape(-1, size, size, 3), kinds, {FRAME_INDEX: rgb_colour(FRAME_COLOUR)})
    return tile_grid(framed, k + 1, GRID_PADDING, rgb_colour(BACKGROUND_COLOUR))


def example_tiles(patches: np.ndarray, found: np.ndarray) -> np.ndarray:
    """``(F, k, C, h, w)`` float patches (NaN outside the image; any ``C``, drawn as
    :func:`patch_tiles` says) and ``(F, k)`` whether each example exists, to
    ``(F, k, T, T, 3)`` ``uint8`` tiles of :data:`EXAMPLE_TILE_PIXELS` (scaled nearest)."""
    filters, k = patches.shape[:2]
    flat = patch_tiles(patches.reshape(filters * k, *patches.shape[2:]), found.reshape(-1))
    tiles = resize_nearest(flat, EXAMPLE_TILE_PIXELS, EXAMPLE_TILE_PIXELS, first_axis=1)
    return tiles.reshape(filters, k, *tiles.shape[1:])


def patch_tiles(patches: np.ndarray, found: np.ndarray) -> np.ndarray:
    """``(N, C, P, P)`` float patches to ``(N, P, P, 3)`` ``uint8`` tiles, each min-max
    normalized over its finite pixels inside the image; outside grey, missing ones white.

    The channels drawn are those of
    :func:`~lightning_filterviz.core.tiles.drawn_channels`: grey for 1 channel, the first
    in grey for 2, the first three as RGB for 3 or more. The part of the field outside the
    image is what the capture filled with NaN: the rows and columns along the patch's
    edges that are NaN in every channel and every pixel (the image is a rectangle inside
    the field). Any other pixel holding a NaN or an Inf is the image's own and drawn
    magenta (:data:`~lightning_filterviz.core.tiles.NON_FINITE_COLOUR`).
    """
    patches = np.asarray(patches, dtype=np.float32)
    outside = _outside_the_image(patches)
    bad = non_finite_pixels(patches) & ~outside
    patches = drawn_channels(patches)
    inside = np.isfinite(patches)
    low = np.where(inside, patches, np.inf).reshape(len(patches), -1).min(axis=1, initial=np.inf)
    high = np.where(inside, patches, -np.inf).reshape(len(patches), -1).max(axis=1, initial=-np.inf)
    span = np.where(high > low, high - low, 1.0)
    low, high = np.where(np.isfinite(low), low, 0.0), np.where(np.isfinite(high), high, 0.0)
    unit = (np.where(inside, patches, 0.0) - low[:, None, None, None]) / span[:, None, None, None]
    unit = np.where(inside, np.where((high > low)[:, None, None, None], unit, 0.0), OUTSIDE_GREY)
    tiles = to_uint8(unit).transpose(0, 2, 3, 1)
    tiles = np.repeat(tiles, 3, axis=-1) if tiles.shape[-1] == 1 else tiles
    tiles[bad] = rgb_colour(NON_FINITE_COLOUR)
    tiles[~np.asarray(found, dtype=bool)] = 255
    return tiles


def _outside_the_image(patches: np.ndarray) -> np.ndarray:
    """``(N, C, P, P)`` patches to ``(N, P, P)``: the edge rows and columns that are NaN in
    every channel and pixel (see :func:`patch_tiles`)."""
    empty = np.isnan(patches).all(axis=1)  # (N, P, P)
    rows, columns = empty.all(axis=2), empty.all(axis=1)  # (N, P) each
    return (_from_the_edges(rows)[:, :, None] | _from_the_edges(columns)[:, None, :])


def _from_the_edges(empty: np.ndarray) -> np.ndarray:
    """``(N, P)`` per-line emptiness to the lines in the unbroken runs of empty ones that
    start at either edge."""
    from_start = np.logical_and.accumulate(empty, axis=1)
    from_end = np.logical_and.accumulate(empty[:, ::-1], axis=1)[:, ::-1]
    return from_start | from_end


def examples_history_image(tiles: np.ndarray) -> np.ndarray:
    """One filter's examples over validation runs: ``(runs, k, S, S, 3)`` ``uint8`` tiles,
    one row per run (earliest first), strongest example first."""
    runs, k, size = tiles.shape[:3]
    frame = {FRAME_INDEX: rgb_colour(FRAME_COLOUR)}
    framed = frame_tiles(tiles.reshape(-1, size, size, 3), frame_kinds(runs * k), frame)
    return tile_grid(framed, k, GRID_PADDING, rgb_colour(BACKGROUND_COLOUR))
