"""The pictures of a snapshot: filter grids, feature-map grids, filmstrips and drift strips.

Knows no logger. Rendering runs on the background writer's thread, so it is written in
NumPy: a torch op large enough to run in parallel, made on a second thread, starts a second
OpenMP team, whose spinning threads take CPU from training on a small machine. (The run
state's few torch ops on per-channel vectors, see :mod:`lightning_filterviz.state.stats`,
stay below torch's parallel grain size.)

Filter grids are ``(H, W, 3)`` ``uint8`` arrays; feature-map grids are
:class:`~lightning_filterviz.core.tiles.IndexedImage` (colormap levels plus a 256-colour
palette), which encode to PNG files a third the size of RGB ones. Small kernels are
upscaled (nearest) to be seen; tiles, frames and colours come from
:mod:`~lightning_filterviz.core.tiles`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from lightning_filterviz.core.filters import WeightNormalization, displayed_filters, non_finite_indices, normalize_filters
from lightning_filterviz.drawing.text import text_mask
from lightning_filterviz.core.tiles import (
    BACKGROUND_COLOUR,
    BACKGROUND_INDEX,
    COLORMAP_LEVELS,
    DEAD_COLOUR,
    DEAD_INDEX,
    FRAME_COLOUR,
    FRAME_INDEX,
    GRID_PADDING,
    NON_FINITE_COLOUR,
    NON_FINITE_INDEX,
    PANEL_PADDING,
    Image,
    IndexedImage,
    colormap_palette,
    frame_kinds,
    frame_tiles,
    image_tiles,
    rgb_colour,
    square_columns,
    tile_grid,
    to_uint8,
    upscale,
)

__all__ = [
    "FILMSTRIP_TILE_PIXELS",
    "SIGNED_COLORMAP",
    "activation_grid",
    "activation_tile",
    "drift_strip",
    "filmstrip",
    "probe_image_grid",
    "weight_grid",
]

# A 3x3 kernel is drawn at least this many pixels wide.
MIN_WEIGHT_TILE_PIXELS = 24
# A feature map is drawn at least this many pixels wide, so that the 8x8 maps of a deep layer
# read as cells (each 4 pixels) and not as a blur once a browser scales the image.
MIN_MAP_TILE_PIXELS = 32
# Feature maps saturate above this percentile of the layer's values: the few brightest
# positions then take the top colour instead of washing every other channel into the bottom.
MAP_DISPLAY_PERCENTILE = 99.5
# Diverging, white at zero: for a conv's output before any activation, which has a sign.
SIGNED_COLORMAP = "RdBu_r"


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
    non_finite = non_finite_indices(shown)
    unit = normalize_filters(shown, normalization, symmetric_range)  # draws NaN and Inf as 0
    kinds = frame_kinds(len(unit), marked, non_finite)
    if unit.shape[1] == 1:
        levels = np.rint(unit[:, 0] * (COLORMAP_LEVELS - 1)).astype(np.uint8)
        return IndexedImage(_indexed_grid(levels, kinds, MIN_WEIGHT_TILE_PIXELS), colormap_palette("gray"))
    tiles = upscale(to_uint8(unit).transpose(0, 2, 3, 1), MIN_WEIGHT_TILE_PIXELS)
    colours = {FRAME_INDEX: FRAME_COLOUR, DEAD_INDEX: DEAD_COLOUR, NON_FINITE_INDEX: NON_FINITE_COLOUR}
    framed = frame_tiles(tiles, kinds, {kind: rgb_colour(colour) for kind, colour in colours.items()})
    return tile_grid(framed, square_columns(len(tiles)), GRID_PADDING, rgb_colour(BACKGROUND_COLOUR))


def activation_grid(
    maps: Any, marked: Sequence[int] = (), colormap: str = "viridis", signed: bool = False
) -> IndexedImage:
    """Draw feature maps: one panel per probe image, each a grid of its channels.

    Values are mapped on one range for the whole layer (not per channel), so a silent
    channel looks silent next to a busy one: from the layer's minimum to its
    :data:`MAP_DISPLAY_PERCENTILE`-th percentile, above which values saturate, so that a few
    bright positions do not wash every other channel into the colormap's bottom (with
    viridis: dark purple is the minimum, yellow the percentile and above). A NaN or Inf value is drawn magenta
    (:data:`~lightning_filterviz.core.tiles.NON_FINITE_COLOUR`, left out of the range), and
    its channel framed magenta.

    Args:
        maps: ``(images, channels, H, W)`` activations (a CPU tensor or an array).
        marked: channel indices to frame in red (dead filters).
        colormap: a matplotlib colormap name.
        signed: map ``-m .. m`` (``m`` the percentile of ``|value|``), so that zero is the
            colormap's middle: for a conv's output before any activation, drawn with a
            diverging colormap (:data:`SIGNED_COLORMAP`).

    Returns:
        An :class:`IndexedImage`; ``.to_rgb()`` gives the ``(H, W, 3)`` ``uint8`` pixels.
    """
    maps = np.asarray(maps, dtype=np.float32)
    finite = np.isfinite(maps)
    non_finite = np.flatnonzero(~finite.all(axis=(0, 2, 3))).tolist()
    if non_finite:  # a copy only when there is something to replace; the range is the finite values'
        maps = np.where(finite, maps, np.float32(0.0))
    images, channels = maps.shape[:2]
    levels = _map_levels(maps, finite, _map_range(maps, finite, bool(non_finite), signed))
    kinds = frame_kinds(channels, marked, non_finite)
    panels = np.stack([_indexed_grid(image, kinds, MIN_MAP_TILE_PIXELS)[..., None] for image in levels])
    background = np.array([BACKGROUND_INDEX], dtype=np.uint8)
    grid = panels[0] if images == 1 else tile_grid(panels, images, PANEL_PADDING, background)
    return IndexedImage(np.ascontiguousarray(grid[..., 0]), colormap_palette(colormap))


def activation_tile(maps: Any, channel: int, colormap: str = "viridis", signed: bool = False) -> np.ndarray:
    """One channel of one probe image's feature maps, as :func:`activation_grid` draws its
    tile (on the range of all of ``maps``), without the frame.

    Args:
        maps: ``(channels, H, W)`` activations of one probe image.
        channel: the channel drawn.
        colormap: as in :func:`activation_grid`.
        signed: as in :func:`activation_grid`.

    Returns:
        The tile's ``(h, w, 3)`` ``uint8`` pixels: those of its tile in
        ``activation_grid(maps[None], ...)``.
    """
    maps = np.asarray(maps, dtype=np.float32)
    finite = np.isfinite(maps)
    non_finite = not finite.all()
    shown = np.where(finite, maps, np.float32(0.0)) if non_finite else maps
    levels = _map_levels(shown[channel], finite[channel], _map_range(shown, finite, non_finite, signed))
    tile = upscale(levels[None, ..., None], MIN_MAP_TILE_PIXELS)[0, ..., 0]
    return colormap_palette(colormap)[tile]


def _map_range(maps: np.ndarray, finite: np.ndarray, non_finite: bool, signed: bool) -> tuple[float, float]:
    """The display range of feature maps: see :func:`activation_grid`."""
    values = maps[finite] if non_finite else maps.reshape(-1)
    if signed:
        high = _display_high(np.abs(values), 0.0)
        return -high, high
    low = float(values.min()) if values.size else 0.0
    return low, _display_high(values, low)


def _map_levels(maps: np.ndarray, finite: np.ndarray, display_range: tuple[float, float]) -> np.ndarray:
    """Colormap levels of ``maps`` on ``display_range``; each NaN or Inf value the palette's
    non-finite colour."""
    levels = _colormap_indices(maps, *display_range)
    if not finite.all():
        levels[~finite] = NON_FINITE_INDEX
    return levels


def _display_high(values: np.ndarray, low: float) -> float:
    """The top of the display range: the values' :data:`MAP_DISPLAY_PERCENTILE`-th percentile,
    or their maximum where that percentile is no higher than ``low`` (a layer that is almost
    all zeros still shows its few positive positions)."""
    if not values.size:
        return low
    high = float(np.percentile(values, MAP_DISPLAY_PERCENTILE))
    return high if high > low else float(values.max())


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
    """The probe's input images, each min-max normalized over its finite values, side by side.

    Images of 1 channel are drawn in grey and of 3 in colour; of 2 channels (an image and
    its mask), the first in grey; of more (RGBA, multispectral), the first three as RGB.
    A pixel holding a NaN or an Inf in any channel is drawn magenta
    (:data:`~lightning_filterviz.core.tiles.NON_FINITE_COLOUR`).

    Args:
        images: ``(N, C, H, W)`` images (a CPU tensor or an array).

    Returns:
        An ``(H, W, 3)`` ``uint8`` image.
    """
    tiles = image_tiles(np.asarray(images, dtype=np.float32))
    return tile_grid(tiles, len(tiles), GRID_PADDING, rgb_colour(BACKGROUND_COLOUR))


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
    white = rgb_colour(BACKGROUND_COLOUR)
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
    (the middle colour: unchanged). A legend below the cells gives each row's colour bar
    and the values at its ends.
    """
    drift = np.clip(np.asarray(drift, dtype=np.float32), 0.0, 1.0)
    ratio = np.clip(np.asarray(norm_ratio, dtype=np.float32) / 2.0, 0.0, 1.0)
    levels = np.rint(np.concatenate([drift, ratio]) * (COLORMAP_LEVELS - 1)).astype(np.uint8)
    cells = np.broadcast_to(levels[:, None, None, None], (len(levels), STRIP_CELL_PIXELS, STRIP_CELL_PIXELS, 1))
    background = np.array([BACKGROUND_INDEX], dtype=np.uint8)
    grid = tile_grid(np.ascontiguousarray(cells), len(drift), 1, background)[..., 0]
    legend = [_colour_bar_line("0", "1", "top: drift from the initial filter"), _colour_bar_line("0", "2", "bottom: norm / initial")]
    return IndexedImage(_stacked([grid, *legend]), colormap_palette(colormap))


# The legend's colour bars: this many pixels wide and high.
LEGEND_BAR_PIXELS = (64, 8)


def _colour_bar_line(low: str, high: str, label: str) -> np.ndarray:
    """One legend line as palette indices: ``low``, a colour bar over the whole colormap, ``high``, ``label``."""
    width, height = LEGEND_BAR_PIXELS
    bar = np.repeat(np.linspace(0, COLORMAP_LEVELS - 1, width).round().astype(np.uint8)[None], height, axis=0)
    parts = [_text(low), bar, _text(high), _text("  " + label)]
    line_height = max(part.shape[0] for part in parts)
    gap = np.full((line_height, 3), BACKGROUND_INDEX, dtype=np.uint8)
    centred = []
    for part in parts:
        above = (line_height - part.shape[0]) // 2
        below = line_height - part.shape[0] - above
        centred += [np.pad(part, ((above, below), (0, 0)), constant_values=BACKGROUND_INDEX), gap]
    return np.concatenate(centred, axis=1)


def _text(text: str) -> np.ndarray:
    """``text`` in Pillow's built-in font, as palette indices: the frame's dark grey on the background."""
    return np.where(text_mask(text), np.uint8(FRAME_INDEX), np.uint8(BACKGROUND_INDEX))


def _stacked(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Index images one below the other, left-aligned, a few background rows apart."""
    width = max(part.shape[1] for part in parts)
    rows = []
    for part in parts:
        rows.append(np.pad(part, ((0, 3), (0, width - part.shape[1])), constant_values=BACKGROUND_INDEX))
    return np.ascontiguousarray(np.concatenate(rows, axis=0))
