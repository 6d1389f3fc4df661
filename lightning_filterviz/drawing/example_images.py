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
    OUTSIDE_GREY,
    frame_kinds,
    frame_tiles,
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
    """``(F, k, C, h, w)`` float patches (NaN outside the image; ``C`` 1 or 3) and ``(F, k)``
    whether each example exists, to ``(F, k, T, T, 3)`` ``uint8`` tiles of
    :data:`EXAMPLE_TILE_PIXELS` (see :func:`patch_tiles`; scaled nearest)."""
    filters, k = patches.shape[:2]
    flat = patch_tiles(patches.reshape(filters * k, *patches.shape[2:]), found.reshape(-1))
    tiles = resize_nearest(flat, EXAMPLE_TILE_PIXELS, EXAMPLE_TILE_PIXELS, first_axis=1)
    return tiles.reshape(filters, k, *tiles.shape[1:])


def patch_tiles(patches: np.ndarray, found: np.ndarray) -> np.ndarray:
    """``(N, C, P, P)`` float patches to ``(N, P, P, 3)`` ``uint8`` tiles, each min-max
    normalized over its pixels inside the image; outside grey, missing ones white."""
    patches = np.asarray(patches, dtype=np.float32)
    inside = np.isfinite(patches)
    low = np.where(inside, patches, np.inf).reshape(len(patches), -1).min(axis=1)
    high = np.where(inside, patches, -np.inf).reshape(len(patches), -1).max(axis=1)
    span = np.where(high > low, high - low, 1.0)
    low, high = np.where(np.isfinite(low), low, 0.0), np.where(np.isfinite(high), high, 0.0)
    unit = (np.where(inside, patches, 0.0) - low[:, None, None, None]) / span[:, None, None, None]
    unit = np.where(inside, np.where((high > low)[:, None, None, None], unit, 0.0), OUTSIDE_GREY)
    tiles = to_uint8(unit).transpose(0, 2, 3, 1)
    tiles = np.repeat(tiles, 3, axis=-1) if tiles.shape[-1] == 1 else tiles
    tiles[~np.asarray(found, dtype=bool)] = 255
    return tiles


def examples_history_image(tiles: np.ndarray) -> np.ndarray:
    """One filter's examples over validation runs: ``(runs, k, S, S, 3)`` ``uint8`` tiles,
    one row per run (earliest first), strongest example first."""
    runs, k, size = tiles.shape[:3]
    frame = {FRAME_INDEX: rgb_colour(FRAME_COLOUR)}
    framed = frame_tiles(tiles.reshape(-1, size, size, 3), frame_kinds(runs * k), frame)
    return tile_grid(framed, k, GRID_PADDING, rgb_colour(BACKGROUND_COLOUR))
