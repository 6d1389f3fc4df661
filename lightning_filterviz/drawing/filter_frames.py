"""One filter's pictures over a run, for the Filters tab and the report's filter page:
frames of one size laid out in rows (a sprite).

Each frame is drawn by the renderer that draws the run's own images
(:mod:`lightning_filterviz.drawing.render`) and cut out of the grid it draws, so a filter's
frame at a step has the pixels of its tile in that step's TensorBoard image (filters
normalized per filter, the default ``weight_normalization``; feature maps on the layer's
range, from the history's first probe image); a feature visualization is the picture the
history keeps, as displayed. NumPy only.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lightning_filterviz.core.tiles import FRAME_PIXELS, GRID_PADDING, resize_nearest, square_columns, tile_origin
from lightning_filterviz.drawing import render

__all__ = ["Sprite", "examples_sprite", "feature_vis_sprite", "maps_sprite", "rgb_pictures", "weights_sprite"]

# Frames per row of a sprite: a long run's timeline wraps instead of growing one row wide.
SPRITE_COLUMNS = 50
WHITE = 255


class Sprite:
    """Frames of one size laid out left to right, then top to bottom, ``gap`` white pixels apart.

    Attributes:
        image: the ``(H, W, 3)`` ``uint8`` pixels; frame ``i`` lies at
            ``x = (i % columns) * (width + gap)``, ``y = (i // columns) * (height + gap)``.
        tile: a frame's ``(height, width)``.
        columns: frames per row.
        gap: white pixels between neighbouring frames.
    """

    def __init__(self, frames: Sequence[np.ndarray], columns: int, gap: int = 0) -> None:
        height, width = frames[0].shape[:2]
        rows = -(-len(frames) // columns)
        shown_columns = min(columns, len(frames))
        image = np.full(
            (rows * (height + gap) - gap, shown_columns * (width + gap) - gap, 3), WHITE, dtype=np.uint8
        )
        for index, frame in enumerate(frames):
            row, column = divmod(index, columns)
            top, left = row * (height + gap), column * (width + gap)
            image[top : top + height, left : left + width] = frame
        self.image = image
        self.tile = (height, width)
        self.columns = columns
        self.gap = gap


def weights_sprite(filters: np.ndarray, gap: int = 0) -> Sprite:
    """One filter at each snapshot: ``filters`` is ``(snapshots, c, h, w)``, its drawn part."""
    # One grid of every frame: each tile is normalized on its own, as in the layer's grid.
    grid = _rgb(render.weight_grid(filters))
    columns = square_columns(len(filters))
    rows = -(-len(filters) // columns)
    return Sprite([_cut_tile(grid, index, columns, rows) for index in range(len(filters))], SPRITE_COLUMNS, gap)


def maps_sprite(layer_maps: Sequence[np.ndarray], channel: int, signed: bool, gap: int = 0) -> Sprite:
    """One channel's feature map at each snapshot that kept them, on that snapshot's layer
    range: ``layer_maps`` holds each snapshot's ``(channels, H, W)`` maps."""
    colormap = render.SIGNED_COLORMAP if signed else "viridis"
    frames = [render.activation_tile(maps, channel, colormap, signed) for maps in layer_maps]
    return Sprite(frames, SPRITE_COLUMNS, gap)


def examples_sprite(runs: Sequence[tuple[np.ndarray, np.ndarray]], gap: int = 0) -> Sprite:
    """One row per validation run of its ``(patches (k, h, w, 3), values (k,))``; a rank the
    filter had no example for (value ``-inf``) stays white."""
    frames = []
    for patches, values in runs:
        for patch, value in zip(patches, values):
            frames.append(patch if np.isfinite(value) else np.full_like(patch, WHITE))
    return Sprite(frames, max(len(patches) for patches, _ in runs), gap)


def feature_vis_sprite(images: Sequence[np.ndarray], gap: int = 0, columns: int = SPRITE_COLUMNS) -> Sprite:
    """One filter's feature visualization at each validation run that made one: ``images``
    holds each ``(H, W, 3)`` or grey ``(H, W, 1)`` ``uint8`` picture as the history keeps it.
    Grey pictures are repeated over the three channels; a smaller one (a run whose input
    size changed) is enlarged, nearest, to the largest."""
    height = max(image.shape[0] for image in images)
    width = max(image.shape[1] for image in images)
    frames = []
    for image in images:
        rgb = rgb_pictures(image)
        frames.append(rgb if rgb.shape[:2] == (height, width) else resize_nearest(rgb, height, width))
    return Sprite(frames, columns, gap)


def rgb_pictures(pictures: np.ndarray) -> np.ndarray:
    """``uint8`` pictures ``(..., H, W, 3)`` as they are, grey ones ``(..., H, W, 1)`` repeated
    over the three channels (how the history keeps feature visualizations of a grey input)."""
    return np.repeat(pictures, 3, axis=-1) if pictures.shape[-1] == 1 else pictures


def _cut_tile(grid: np.ndarray, index: int, columns: int, rows: int) -> np.ndarray:
    """Tile ``index`` of a grid of framed tiles laid out by
    :func:`~lightning_filterviz.core.tiles.tile_grid`, without its frame."""
    tile_height = (grid.shape[0] - GRID_PADDING) // rows - GRID_PADDING - 2 * FRAME_PIXELS
    tile_width = (grid.shape[1] - GRID_PADDING) // columns - GRID_PADDING - 2 * FRAME_PIXELS
    top, left = tile_origin(index, tile_height, tile_width, columns)
    return grid[top : top + tile_height, left : left + tile_width]


def _rgb(image: object) -> np.ndarray:
    to_rgb = getattr(image, "to_rgb", None)
    return np.asarray(to_rgb() if to_rgb is not None else image)
