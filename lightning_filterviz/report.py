"""An offline HTML report of a training run, built from the history files FilterMonitor saves.

Each snapshot lies in ``<log dir>/filterviz/history/step_<step>.npz`` (see
:mod:`lightning_filterviz.history`). The report reads them back and writes one
self-contained HTML page: line charts of the dead and dormant fractions and of filter
drift over the steps, the final filter grids and a filmstrip of filters across snapshots.
Images are embedded as base64 PNG data URIs, so the page can be mailed or archived alone.

Filter images come from the package's own renderer (:mod:`lightning_filterviz.render`),
each filter normalized on its own (``weight_normalization="filter"``, the default), so
with other normalizations they can differ from the run's TensorBoard images.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from lightning_filterviz import render
from lightning_filterviz.history import (
    HISTORY_DIR,
    HISTORY_FORMAT,
    HISTORY_PATTERN,
    load_history,
    pointed_history_dirs,
)
from lightning_filterviz.layer_names import resolve_layer_patterns
from lightning_filterviz.png import encode_png

REPORT_FILENAME = "filterviz_report.html"
EXPECTED_HISTORY = f"{HISTORY_DIR.as_posix()}/{HISTORY_PATTERN} written by FilterMonitor"
# A filmstrip row per snapshot grows the image without bound on long runs; past this many
# snapshots, rows are taken evenly spaced (first and last always kept).
MAX_FILMSTRIP_ROWS = 32
# The filmstrip is shown this many times its pixel size.
FILMSTRIP_DISPLAY_SCALE = 2
# Past this many points a line is drawn without markers, which would only blur it.
MAX_MARKED_POINTS = 60

PathLike = Union[str, os.PathLike]


class ReportError(ValueError):
    """Bad input for a report; the message is one line, meant for the user."""


@dataclass
class SnapshotRecord:
    """What the report needs of one history file (feature maps are dropped: they are the bulk).

    Attributes:
        path: the history file.
        step: the training step of the snapshot.
        layers: conv layer names, in the model's order.
        out_channels: layer -> number of filters of the conv.
        filters: layer -> drawn filters ``(F, C, kh, kw)`` float32, ``C`` in {1, 3}.
        drift: layer -> per-filter cosine distance from the initial weights.
        dead: layer -> dead filter indices (only layers with a ReLU-family activation).
        dormant: layer -> dormant filter indices (only layers whose activation was captured).
    """

    path: Path
    step: int
    layers: list[str]
    out_channels: dict[str, int] = field(default_factory=dict)
    filters: dict[str, np.ndarray] = field(default_factory=dict)
    drift: dict[str, np.ndarray] = field(default_factory=dict)
    dead: dict[str, np.ndarray] = field(default_factory=dict)
    dormant: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Run:
    """The history of one training run, snapshots sorted by step.

    Attributes:
        label: how the run is named on the page (its log dir, relative to the report's input).
        history_dir: the directory holding the history files.
        records: one per history file, by increasing step.
    """

    label: str
    history_dir: Path
    records: list[SnapshotRecord]

    @property
    def layers(self) -> list[str]:
        """Every layer seen in any snapshot, in order of first appearance."""
        seen: dict[str, None] = {}
        for record in self.records:
            seen.update(dict.fromkeys(record.layers))
        return list(seen)

    @property
    def steps(self) -> list[int]:
        """The snapshot steps, increasing."""
        return [record.step for record in self.records]


# ---------------------------------------------------------------- finding and reading history


def find_history_dirs(log_dir: PathLike) -> list[Path]:
    """The history directories under ``log_dir``, sorted.

    ``log_dir`` may be a history directory itself, the ``filterviz`` directory above it, a
    trainer's log directory or any parent of several of those; or the directory of another
    logger of the same run, where a note points to the history.

    Args:
        log_dir: an existing directory.

    Returns:
        Directories that hold at least one ``step_*.npz`` file; empty when there is none.
    """
    root = Path(log_dir)
    # The direct cases first: rglob("filterviz/history") cannot see them when the input is
    # the history directory or the filterviz directory itself.
    candidates = [root, root / "history", *root.rglob(HISTORY_DIR.as_posix()), *pointed_history_dirs(root)]
    found: dict[Path, Path] = {}
    for candidate in candidates:
        if candidate.is_dir() and any(path.is_file() for path in candidate.glob(HISTORY_PATTERN)):
            found.setdefault(candidate.resolve(), candidate)
    return sorted(found.values())


def read_snapshot(path: Path) -> SnapshotRecord:
    """Read one history file into a :class:`SnapshotRecord`.

    Args:
        path: a ``step_*.npz`` file.

    Returns:
        The snapshot's step, layers, filters and statistics.

    Raises:
        ReportError: the file is not a history file, is damaged, or lacks a required array.
    """
    try:
        arrays = load_history(path)
    except ValueError as error:  # load_history's foreign-file check, and NumPy's refusal of pickles
        raise ReportError(f"{path} is not a lightning_filterviz history file (format {HISTORY_FORMAT!r})") from error
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ReportError(f"{path} is corrupt: {_one_line(error)}") from error
    try:
        return _record_from_arrays(path, arrays)
    except (KeyError, ValueError, TypeError) as error:
        raise ReportError(f"{path} is an incomplete history file: {_one_line(error)}") from error


def _record_from_arrays(path: Path, arrays: dict[str, np.ndarray]) -> SnapshotRecord:
    """Pick the report's arrays out of one loaded history file (KeyError when one is missing)."""
    record = SnapshotRecord(path=path, step=int(arrays["step"]), layers=[str(name) for name in arrays["layers"]])
    for name in record.layers:
        filters = arrays[f"{name}/filters"]
        if filters.ndim != 4:
            raise ValueError(f"{name}/filters has shape {filters.shape}, expected (F, C, kh, kw)")
        record.filters[name] = filters
        record.out_channels[name] = int(arrays[f"{name}/out_channels"])
        # Optional arrays: drift may be missing (older writers) and dead/dormant need an activation.
        for key, target in (("drift", record.drift), ("dead", record.dead), ("dormant", record.dormant)):
            if f"{name}/{key}" in arrays:
                target[name] = arrays[f"{name}/{key}"]
    return record


def read_run(history_dir: Path, label: str) -> Run:
    """Read every history file of one run.

    Args:
        history_dir: a directory of ``step_*.npz`` files.
        label: the run's name on the page.

    Returns:
        The run, snapshots sorted by their step.

    Raises:
        ReportError: for a history file that cannot be read.
    """
    records = [read_snapshot(path) for path in sorted(history_dir.glob(HISTORY_PATTERN)) if path.is_file()]
    # Sort by the recorded step, not the name: 8 digits in the name overflow past 10**8 steps.
    records.sort(key=lambda record: record.step)
    return Run(label=label, history_dir=history_dir, records=records)


def run_label(history_dir: Path, root: Path) -> str:
    """Name a run by its trainer log dir relative to ``root`` (the report's input).

    Args:
        history_dir: the run's history directory.
        root: the directory the report was asked for.

    Returns:
        For ``root/a/version_0/filterviz/history``, ``a/version_0``; ``root``'s name for a
        history found at ``root`` itself.
    """
    log_dir = history_dir.parent.parent if history_dir.parts[-2:] == HISTORY_DIR.parts else history_dir
    try:
        relative = log_dir.resolve().relative_to(root.resolve())
    except ValueError:  # the input was the history or filterviz directory: the log dir is above it
        return str(log_dir)
    return relative.as_posix() if relative.parts else (root.resolve().name or str(root))


# ---------------------------------------------------------------- series for the charts


def fraction_series(run: Run, key: str) -> dict[str, tuple[list[int], list[float]]]:
    """Per layer, the steps and the fraction of its filters listed under ``key``.

    Args:
        run: the run.
        key: ``"dead"`` or ``"dormant"``.

    Returns:
        layer -> (steps, fractions) for the layers that have ``key`` in some snapshot.
    """
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in run.records:
        for name, indices in getattr(record, key).items():
            steps, fractions = series.setdefault(name, ([], []))
            steps.append(record.step)
            fractions.append(len(indices) / max(record.out_channels[name], 1))
    return series


def drift_series(run: Run) -> dict[str, tuple[list[int], list[float]]]:
    """Per layer, the steps and the mean drift of its filters (layers without drift are left out).

    Args:
        run: the run.

    Returns:
        layer -> (steps, mean drifts).
    """
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in run.records:
        for name, drift in record.drift.items():
            if drift.size == 0:
                continue
            steps, means = series.setdefault(name, ([], []))
            steps.append(record.step)
            means.append(float(np.mean(drift)))
    return series


# ---------------------------------------------------------------- images


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


def filter_grid(filters: np.ndarray, dead: Union[Sequence[int], np.ndarray] = ()) -> render.Image:
    """The package's filter grid of one layer, dead filters framed in red.

    Args:
        filters: ``(F, C, kh, kw)`` drawn filters from a history file.
        dead: dead filter indices (those beyond the drawn filters are ignored).

    Returns:
        An ``(H, W, 3)`` ``uint8`` image or an :class:`~lightning_filterviz.render.IndexedImage`.
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
    tiles = [
        render.to_uint8(render.normalize_filters(record.filters[layer], "filter")).transpose(0, 2, 3, 1)
        for record in rows
    ]
    return render.filmstrip(tiles)


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


# ---------------------------------------------------------------- HTML


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; word-break: break-all; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; word-break: break-all; }
figure { margin: 1em 0; }
figcaption { color: #555; font-size: .9em; margin-top: .3em; }
img { max-width: 100%; }
img.pixels { image-rendering: pixelated; }
table { border-collapse: collapse; font-size: .9em; }
td, th { border: 1px solid #ddd; padding: .2em .6em; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.none { color: #777; font-style: italic; }
"""


def _figure_html(
    heading: str, image_uri: Optional[str], caption: str, alt: str, pixels: bool = False, width: Optional[int] = None
) -> str:
    """A ``<section>`` with a heading, one image (or a note when there is no data) and a caption.

    ``pixels`` images are scaled without smoothing; ``width`` sets their displayed width.
    """
    parts = [f"<h3>{html.escape(heading)}</h3>"]
    if image_uri is None:
        parts.append(f'<p class="none">{html.escape(caption)}</p>')
    else:
        css = ' class="pixels"' if pixels else ""
        size = f' width="{width}"' if width is not None else ""
        parts.append(
            f'<figure><img{css}{size} alt="{html.escape(alt)}" src="{image_uri}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return "<section>" + "".join(parts) + "</section>"


def _chart_section(
    heading: str,
    series: dict[str, tuple[list[int], list[float]]],
    ylabel: str,
    ylim: tuple[float, Optional[float]],
    colours: dict[str, Any],
    caption: str,
    missing: str,
) -> str:
    if not series:
        return _figure_html(heading, None, missing, heading)
    return _figure_html(heading, data_uri(line_chart_png(series, ylabel, ylim, colours)), caption, heading)


def _summary_table(run: Run) -> str:
    """A table of every layer at the last snapshot: filters, dead, dormant, mean drift."""
    last = run.records[-1]
    rows = ["<tr><th>layer</th><th>filters</th><th>dead</th><th>dormant</th><th>mean drift</th></tr>"]
    for name in last.layers:
        cells = [
            html.escape(name),
            str(last.out_channels[name]),
            str(len(last.dead[name])) if name in last.dead else "–",
            str(len(last.dormant[name])) if name in last.dormant else "–",
            f"{float(np.mean(last.drift[name])):.3f}" if last.drift.get(name, np.empty(0)).size else "–",
        ]
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    return f"<table>{''.join(rows)}</table>"


def run_html(run: Run, filmstrip_patterns: Optional[Sequence[str]] = None) -> str:
    """The HTML of one run: a summary, the three charts, the final filters and the filmstrips.

    Args:
        run: a run with at least one snapshot.
        filmstrip_patterns: layer names or fnmatch patterns for filmstrips; ``None``: the first layer.

    Returns:
        An HTML fragment.
    """
    steps, layers, last = run.steps, run.layers, run.records[-1]
    colours = layer_colours(layers)
    parts = [
        f"<h2>Run: {html.escape(run.label)}</h2>",
        f"<p>{len(steps)} snapshot{'s' if len(steps) != 1 else ''} "
        f"in <code>{html.escape(str(run.history_dir))}</code>; "
        f"steps: {html.escape(', '.join(str(step) for step in steps))}. Layers at step {last.step}:</p>",
        _summary_table(run),
        _chart_section(
            "Dead filters",
            fraction_series(run, "dead"),
            "dead fraction",
            (0.0, 1.0),
            colours,
            "Fraction of each layer's filters that never fired on the probe for several snapshots in a row.",
            "No layer recorded dead filters (only convs followed by a ReLU-family activation do).",
        ),
        _chart_section(
            "Dormant filters",
            fraction_series(run, "dormant"),
            "dormant fraction",
            (0.0, 1.0),
            colours,
            "Fraction of each layer's filters whose mean |activation| is a tiny part of the layer's average.",
            "No layer recorded dormant filters (they need a captured activation).",
        ),
        _chart_section(
            "Filter drift",
            drift_series(run),
            "mean drift (1 - cosine)",
            # Drift spans [0, 2] but training moves filters far less: a fixed top would flatten the lines.
            (0.0, None),
            colours,
            "Mean cosine distance of each layer's filters from their first snapshot: "
            "0 kept direction, 1 orthogonal, 2 reversed.",
            "No snapshot recorded filter drift.",
        ),
    ]
    for name in last.layers:
        filters = last.filters[name]
        dead = last.dead.get(name, np.empty(0, dtype=np.int64))
        parts.append(
            _figure_html(
                f"Final filters: {name}",
                data_uri(encode_png(filter_grid(filters, dead))),
                f"{len(filters)} of {last.out_channels[name]} filters at step {last.step}, "
                f"each scaled to its own min..max; red frame: dead ({len(dead)}).",
                f"filters of {name}",
                pixels=True,
            )
        )
    parts.extend(_filmstrip_sections(run, filmstrip_patterns))
    return "\n".join(parts)


def _filmstrip_sections(run: Run, patterns: Optional[Sequence[str]]) -> list[str]:
    layers = resolve_layer_patterns(patterns, run.layers)
    if not layers:
        wanted = ", ".join(patterns or ())
        return [_figure_html("Filmstrip", None, f"No layer of this run matches {wanted}.", "filmstrip")]
    sections = []
    for name in layers:
        rows = filmstrip_rows(run.records, name)
        steps = ", ".join(str(record.step) for record in rows)
        image = filmstrip_image(rows, name)
        sections.append(
            _figure_html(
                f"Filmstrip: {name}",
                data_uri(encode_png(image)),
                f"{name}'s filters at each snapshot, top to bottom: steps {steps}.",
                f"filmstrip of {name}",
                pixels=True,
                # Small tiles keep the PNG small; the browser doubles them, unsmoothed.
                width=FILMSTRIP_DISPLAY_SCALE * image.shape[1],
            )
        )
    return sections


def page_html(title: str, body: Sequence[str]) -> str:
    """A complete HTML page: inline style, no scripts, no external resources."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------- entry point


def load_runs(log_dir: PathLike) -> list[Run]:
    """Find and read every run under ``log_dir``.

    Args:
        log_dir: a history, filterviz, trainer log or parent directory.

    Returns:
        The runs, each with at least one snapshot.

    Raises:
        ReportError: ``log_dir`` is missing or not a directory, holds no history, or a
            history file cannot be read.
    """
    root = Path(log_dir)
    if not root.exists():
        raise ReportError(f"{root} does not exist")
    if not root.is_dir():
        raise ReportError(f"{root} is not a directory")
    history_dirs = find_history_dirs(root)
    if not history_dirs:
        raise ReportError(f"no history under {root}: expected {EXPECTED_HISTORY}")
    return [read_run(directory, run_label(directory, root)) for directory in history_dirs]


def build_report(
    log_dir: PathLike,
    output: Optional[PathLike] = None,
    filmstrip_layers: Optional[Sequence[str]] = None,
) -> Path:
    """Write the HTML report of the runs under ``log_dir``.

    Args:
        log_dir: the history directory, the ``filterviz`` directory, a trainer's log
            directory, or a parent of several runs (one section per run).
        output: the HTML file to write; default ``<log_dir>/filterviz_report.html``.
        filmstrip_layers: layer names or fnmatch patterns to draw filmstrips of; default
            the first conv layer.

    Returns:
        The path written.

    Raises:
        ReportError: for bad input (see :func:`load_runs`) or an output that cannot be written.
    """
    runs = load_runs(log_dir)
    target = Path(output) if output is not None else Path(log_dir) / REPORT_FILENAME
    page = page_html(f"filterviz report: {log_dir}", [run_html(run, filmstrip_layers) for run in runs])
    try:
        target.write_text(page, encoding="utf-8")
    except OSError as error:
        raise ReportError(f"cannot write {target}: {_one_line(error)}") from error
    return target


def _one_line(error: BaseException) -> str:
    """An exception as one line of text, for a one-line error message."""
    text = " ".join(str(error).split())
    return text or type(error).__name__
