"""An offline HTML report of a training run, built from the history files FilterMonitor saves.

Each snapshot lies in ``<log dir>/filterviz/history/step_<step>.npz`` (see
:mod:`lightning_filterviz.core.history`). The report reads them back and writes one
self-contained HTML page: line charts of the dead, dormant and gradient-dormant fractions,
of filter drift and of each layer's health signals (effective rank, srank, CKA to the first
snapshot) over the steps, the final filter grids, a filmstrip of filters across snapshots,
the latest feature visualizations (each filter beside the input that excites it most) and
the filter page of one layer (each filter's weights, feature maps, dataset examples and
feature visualizations over the run, with its curves, its gradient score among them), as
TensorBoard's Filters tab shows a filter.
Images are embedded as base64 PNG data URIs, so the page can be mailed or archived alone.

This module is the entry point, :func:`build_report`; the work is done by
:mod:`lightning_filterviz.report.runs` (finding and reading the history, the charted
series), :mod:`lightning_filterviz.report.filter_series` (one layer's filters over the run),
:mod:`lightning_filterviz.report.images` (charts, filter grids, filmstrips),
:mod:`lightning_filterviz.report.filter_page` (the filter page) and
:mod:`lightning_filterviz.report.html` (the page). None of them loads torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from lightning_filterviz.report.filter_series import check_filter_layer
from lightning_filterviz.report.html import page_html, run_html
from lightning_filterviz.report.runs import (
    PathLike,
    ReportError,
    ReportWarning,
    Run,
    SnapshotRecord,
    drift_series,
    fraction_series,
    load_runs,
    one_line,
)

# Besides build_report, the names callers of the report use, re-exported from where they live.
__all__ = [
    "REPORT_FILENAME",
    "ReportError",
    "ReportWarning",
    "Run",
    "SnapshotRecord",
    "build_report",
    "drift_series",
    "fraction_series",
    "load_runs",
]

REPORT_FILENAME = "filterviz_report.html"


def build_report(
    log_dir: PathLike,
    output: Optional[PathLike] = None,
    filmstrip_layers: Optional[Sequence[str]] = None,
    examples_filter: int = 0,
    filter_layer: Optional[str] = None,
) -> Path:
    """Write the HTML report of the runs under ``log_dir``.

    Args:
        log_dir: the history directory, the ``filterviz`` directory, a trainer's log
            directory, or a parent of several runs (one section per run).
        output: the HTML file to write; default ``<log_dir>/filterviz_report.html``.
        filmstrip_layers: layer names or fnmatch patterns to draw filmstrips of; default
            the first conv layer.
        examples_filter: the filter whose dataset examples (from validation runs) are shown
            over time, for each layer that has them.
        filter_layer: the layer of the filter page (each of its drawn filters' weights,
            feature maps and dataset examples over the run, and its curves); default each
            run's first conv layer. A run under ``log_dir`` that lacks it gets a note.

    Returns:
        The path written.

    Raises:
        ReportError: for bad input (see :func:`load_runs`), a ``filter_layer`` that no run
            has (the message names the layers there are) or an output that cannot be written.

    Warns:
        ReportWarning: once for each history file skipped (corrupt, not a history file) and
            each layer left out of a file that lacks its arrays, naming the file and what is
            missing (snapshots, dataset examples and feature visualizations alike), and each
            file whose feature maps or feature visualizations cannot be read again when
            drawn; the page lists the files skipped and the parts left out too, and draws the rest.
    """
    runs = load_runs(log_dir)
    target = Path(output) if output is not None else Path(log_dir) / REPORT_FILENAME
    if not isinstance(examples_filter, int) or isinstance(examples_filter, bool) or examples_filter < 0:
        raise ReportError(f"examples_filter must be a filter index >= 0, got {examples_filter!r}")
    check_filter_layer(runs, filter_layer)
    sections = [
        # The first run's ids are the plain filter-<layer>-<index>; the others' are set apart.
        run_html(run, filmstrip_layers, examples_filter, filter_layer, f"run{number}-" if number else "")
        for number, run in enumerate(runs)
    ]
    page = page_html(f"filterviz report: {log_dir}", sections)
    try:
        target.write_text(page, encoding="utf-8")
    except OSError as error:
        raise ReportError(f"cannot write {target}: {one_line(error)}") from error
    return target
