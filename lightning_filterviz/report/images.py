"""The report's images: line charts of the run's statistics, a filter's curves, filter
grids and filmstrips.

Charts are drawn with matplotlib's object-oriented API (imported on first use, so reading
a history needs no matplotlib); filter images come from the package's own renderer
(:mod:`lightning_filterviz.drawing.render`), each filter normalized on its own
(``weight_normalization="filter"``, the default), so with other normalizations they can
differ from the run's TensorBoard images. NumPy only: the report loads no torch.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any, Collection, Optional, Sequence, TypeVar, Union

import numpy as np

from lightning_filterviz.drawing import render

from lightning_filterviz.core import filters, tiles
from lightning_filterviz.core.png import PNG_COMPRESSION
from lightning_filterviz.report.runs import SnapshotRecord

__all__ = [
    "DEAD_BAND_COLOUR",
    "DORMANT_BAND_COLOUR",
    "GRAD_DORMANT_BAND_COLOUR",
    "FilterCurvesChart",
    "MAX_FILMSTRIP_ROWS",
    "MAX_MARKED_POINTS",
    "data_uri",
    "evenly_spaced",
    "filmstrip_image",
    "filmstrip_rows",
    "filter_grid",
    "layer_colours",
    "line_chart_png",
]

Item = TypeVar("Item")

# A filmstrip row per snapshot grows the image without bound on long runs; past this many
# snapshots, rows are taken evenly spaced (first and last always kept).
MAX_FILMSTRIP_ROWS = 32
# Past this many points a line is drawn without markers, which would only blur it.
MAX_MARKED_POINTS = 60
# The snapshots where a filter is dead or dormant, shaded behind its curves (the tab's colours),
# and, behind its gradient score, where it is gradient-dormant.
DEAD_BAND_COLOUR = "#e53935"
DORMANT_BAND_COLOUR = "#ffb300"
GRAD_DORMANT_BAND_COLOUR = "#8e24aa"
BAND_ALPHA = 0.3
CURVE_COLOUR = "#1f77b4"
# The colours a filter's chart is saved with (a palette PNG), edges antialiased in between.
CHART_COLOURS = 64


def line_chart_png(
    series: dict[str, tuple[list[int], list[float]]],
    ylabel: str,
    ylim: tuple[float, Optional[float]],
    colours: dict[str, Any],
    integer_y: bool = False,
) -> bytes:
    """Draw one line per layer over the steps and return the chart as PNG bytes.

    Args:
        series: layer -> (steps, values).
        ylabel: the y axis label.
        ylim: the y axis range; a top of ``None`` fits the data.
        colours: layer -> matplotlib colour, so a layer has one colour in every chart.
        integer_y: y ticks at whole numbers only, for counts.

    Returns:
        PNG bytes.
    """
    # The object-oriented API without pyplot: the figure is never registered with pyplot's
    # figure manager (so it needs no plt.close and cannot leak there) and the user's
    # interactive backend is left alone; rendering is Agg.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(8, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    try:
        axes = figure.add_subplot()
        for name, (steps, values) in series.items():
            marker = "o" if len(steps) <= MAX_MARKED_POINTS else None
            # clip_on=False keeps a line lying on y=0 or y=1 (no dead filters, all dead) visible.
            axes.plot(steps, values, label=name, color=colours[name], marker=marker, markersize=3, clip_on=False)
        axes.set_xlabel("step")
        axes.set_ylabel(ylabel)
        axes.set_ylim(bottom=ylim[0], top=ylim[1])
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        if integer_y:
            axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(True, alpha=0.3)
        axes.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize="small",
            ncol=max(1, math.ceil(len(series) / 18)),
            frameon=False,
        )
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()
    finally:
        figure.clear()


class FilterCurvesChart:
    """Small panels of one filter's curves over the steps, with its dead and dormant
    snapshots shaded (its gradient-dormant ones on the ``gradient_panels``); drawn again for
    each filter of a layer.

    A layer's filters share the steps and, per panel, the value range (so two filters'
    curves compare at a glance), hence the axes, ticks and labels: they are drawn once,
    and each filter's bands and lines are drawn over a copy of them (matplotlib's
    blitting). A layer of 64 filters costs one full draw instead of 64.

    Args:
        steps: the snapshots' steps.
        panels: per panel, its title and its ``(bottom, top)`` value range.
        gradient_panels: the indices of the panels of gradient curves, shaded where the filter
            is gradient-dormant instead of where it is dead or dormant.
    """

    def __init__(
        self,
        steps: Sequence[int],
        panels: Sequence[tuple[str, tuple[float, float]]],
        gradient_panels: Collection[int] = (),
    ) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.collections import PolyCollection
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator, ScalarFormatter

        self.steps = np.asarray(steps, dtype=np.float64)
        columns = 2
        rows = math.ceil(len(panels) / columns)
        height = 1.35 * rows + 0.35
        self._figure = Figure(figsize=(6.4, height), dpi=90)
        # Fixed margins: matplotlib's layout engines measure every label and cost more than
        # the figure's drawing; these fit the short tick labels of these panels.
        self._figure.subplots_adjust(
            left=0.11, right=0.99, top=1 - 0.22 / height, bottom=0.4 / height, wspace=0.3, hspace=0.45
        )
        self._canvas = FigureCanvasAgg(self._figure)
        self._panels = []
        grid = self._figure.subplots(rows, columns, sharex=True, squeeze=False)
        for number, (axes, (title, limits)) in enumerate(zip(grid.flat, panels)):
            axes.set_title(title, fontsize="small", loc="left")
            axes.set_xlim(*_step_range(self.steps))
            axes.set_ylim(*limits)
            axes.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))  # steps are whole numbers
            axes.yaxis.set_major_locator(MaxNLocator(nbins=3))
            # Values in the labels themselves: an offset or a "1e-5" above the axis would
            # sit on the panel's title.
            labels = ScalarFormatter(useOffset=False)
            labels.set_scientific(False)
            axes.yaxis.set_major_formatter(labels)
            axes.tick_params(labelsize="x-small")
            axes.grid(True, alpha=0.3)
            # Bands span the panel's height whatever its values: x in steps, y in axes units.
            gradient = number in gradient_panels
            colours = (GRAD_DORMANT_BAND_COLOUR,) if gradient else (DEAD_BAND_COLOUR, DORMANT_BAND_COLOUR)
            bands = [
                PolyCollection([], facecolors=colour, alpha=BAND_ALPHA, animated=True, transform=axes.get_xaxis_transform())
                for colour in colours
            ]
            for band in bands:
                axes.add_collection(band, autolim=False)
            marker = "o" if len(self.steps) <= MAX_MARKED_POINTS else None
            (line,) = axes.plot([], [], color=CURVE_COLOUR, marker=marker, markersize=2.5, linewidth=1.2, animated=True)
            self._panels.append((axes, bands, line, gradient))
        for column in range(columns):
            # The lowest panel of each column shows the steps (a last row left part empty has
            # its column's steps on the panel above).
            lowest = max(row for row in range(rows) if row * columns + column < max(len(panels), 1))
            grid[lowest, column].set_xlabel("step", fontsize="small")
            grid[lowest, column].xaxis.set_tick_params(labelbottom=True)
        for axes in grid.flat[len(panels) :]:
            axes.set_visible(False)
        self._canvas.draw()  # everything but the animated bands and lines
        self._background = self._canvas.copy_from_bbox(self._figure.bbox)

    def png(
        self,
        values: Sequence[np.ndarray],
        dead: np.ndarray,
        dormant: np.ndarray,
        grad_dormant: Optional[np.ndarray] = None,
    ) -> bytes:
        """One filter's chart as PNG bytes.

        Args:
            values: per panel, the filter's value at each step (NaN where unknown).
            dead: at each step, whether the filter is dead.
            dormant: at each step, whether it is dormant (and not dead).
            grad_dormant: at each step, whether it is gradient-dormant (shaded on the
                gradient panels); ``None``: never.

        Returns:
            PNG bytes.
        """
        never = np.zeros(len(self.steps), dtype=bool)
        states = (dead, dormant)
        gradient_states = (grad_dormant if grad_dormant is not None else never,)
        self._canvas.restore_region(self._background)
        for (axes, bands, line, gradient), series in zip(self._panels, values):
            for band, marked in zip(bands, gradient_states if gradient else states):
                band.set_verts(_band_rectangles(self.steps, marked))
                axes.draw_artist(band)
            line.set_data(self.steps, series)
            axes.draw_artist(line)
        return _palette_png(np.asarray(self._canvas.buffer_rgba())[..., :3])

    def close(self) -> None:
        """Free the figure."""
        self._figure.clear()


def _palette_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a chart in :data:`CHART_COLOURS` colours: a chart has few colours besides
    its antialiased edges, and a palette PNG is a third of the size of an RGB one, which
    counts on a page of one chart per filter."""
    from PIL import Image as PILImage

    picture = PILImage.fromarray(np.ascontiguousarray(pixels)).quantize(
        CHART_COLOURS, method=PILImage.Quantize.FASTOCTREE, dither=PILImage.Dither.NONE
    )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=PNG_COMPRESSION)
    return buffer.getvalue()


def _step_range(steps: np.ndarray) -> tuple[float, float]:
    """The x range of a chart of ``steps``; one step gets a unit either side."""
    first, last = float(steps[0]), float(steps[-1])
    return (first - 1.0, last + 1.0) if first == last else (first, last)


def _band_rectangles(steps: np.ndarray, marked: np.ndarray) -> list[np.ndarray]:
    """Rectangles (x in steps, y 0..1 of the axes) over each run of marked snapshots, from
    halfway to the snapshot before to halfway to the one after, as the Filters tab shades them."""
    # Halfway between neighbours; the first and last snapshot's own step at the ends.
    edges = np.concatenate(([steps[0]], (steps[:-1] + steps[1:]) / 2, [steps[-1]]))
    flips = np.flatnonzero(np.diff(np.concatenate(([0], marked.astype(np.int8), [0]))))
    rectangles = []
    for start, stop in zip(flips[::2], flips[1::2]):
        left, right = edges[start], edges[stop]
        rectangles.append(np.array([[left, 0.0], [right, 0.0], [right, 1.0], [left, 1.0]]))
    return rectangles


def layer_colours(layers: Sequence[str]) -> dict[str, Any]:
    """A fixed colour per layer, so that a layer looks the same in every chart."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(layers) <= 10 else "tab20"]
    return {name: palette(index % palette.N) for index, name in enumerate(layers)}


def filter_grid(filters: np.ndarray, dead: Union[Sequence[int], np.ndarray] = ()) -> tiles.Image:
    """The package's filter grid of one layer, dead filters framed in red.

    Args:
        filters: ``(F, C, kh, kw)`` drawn filters from a history file.
        dead: dead filter indices (those beyond the drawn filters are ignored).

    Returns:
        An ``(H, W, 3)`` ``uint8`` image or an :class:`~lightning_filterviz.core.tiles.IndexedImage`.
    """
    marked = [int(index) for index in dead if 0 <= index < len(filters)]
    return render.weight_grid(filters, "filter", None, marked=marked, rgb=(filters.shape[1] == 3))


def filmstrip_image(rows: Sequence[SnapshotRecord], layer: str) -> np.ndarray:
    """One row per snapshot of ``layer``'s filters, earliest on top, drawn as in TensorBoard.

    Args:
        rows: the snapshots to show, each holding ``layer``.
        layer: the conv layer.

    Returns:
        An ``(H, W, 3)`` ``uint8`` image.
    """
    snapshot_rows = [
        tiles.to_uint8(filters.normalize_filters(record.filters[layer], "filter")).transpose(0, 2, 3, 1)
        for record in rows
    ]
    return render.filmstrip(snapshot_rows)


def filmstrip_rows(
    records: Sequence[SnapshotRecord], layer: str, limit: int = MAX_FILMSTRIP_ROWS
) -> list[SnapshotRecord]:
    """The snapshots of ``layer`` shown in its filmstrip: all, or ``limit`` evenly spaced.

    Args:
        records: the run's snapshots, by step.
        layer: the conv layer.
        limit: the most rows.

    Returns:
        The chosen snapshots, first and last included.
    """
    return evenly_spaced([record for record in records if layer in record.filters], limit)


def evenly_spaced(items: Sequence[Item], limit: int) -> list[Item]:
    """All ``items``, or ``limit`` of them evenly spaced, the first and the last included."""
    if len(items) <= limit:
        return list(items)
    picks = np.unique(np.linspace(0, len(items) - 1, limit).round().astype(int))
    return [items[index] for index in picks]


def data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,`` URI of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
