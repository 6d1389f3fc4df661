"""The report's images: line charts of the run's statistics, filter grids and filmstrips.

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
from typing import Any, Optional, Sequence, Union

import numpy as np

from lightning_filterviz.drawing import render

from lightning_filterviz.core import filters, tiles
from lightning_filterviz.report.runs import SnapshotRecord

__all__ = [
    "MAX_FILMSTRIP_ROWS",
    "MAX_MARKED_POINTS",
    "data_uri",
    "filmstrip_image",
    "filmstrip_rows",
    "filter_grid",
    "layer_colours",
    "line_chart_png",
]

# A filmstrip row per snapshot grows the image without bound on long runs; past this many
# snapshots, rows are taken evenly spaced (first and last always kept).
MAX_FILMSTRIP_ROWS = 32
# Past this many points a line is drawn without markers, which would only blur it.
MAX_MARKED_POINTS = 60


def line_chart_png(
    series: dict[str, tuple[list[int], list[float]]],
    ylabel: str,
    ylim: tuple[float, Optional[float]],
    colours: dict[str, Any],
) -> bytes:
    """Draw one line per layer over the steps and return the chart as PNG bytes.

    Args:
        series: layer -> (steps, values).
        ylabel: the y axis label.
        ylim: the y axis range; a top of ``None`` fits the data.
        colours: layer -> matplotlib colour, so a layer has one colour in every chart.

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
    holding = [record for record in records if layer in record.filters]
    if len(holding) <= limit:
        return holding
    picks = np.unique(np.linspace(0, len(holding) - 1, limit).round().astype(int))
    return [holding[index] for index in picks]


def data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,`` URI of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
