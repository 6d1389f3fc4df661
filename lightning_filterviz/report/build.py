"""An offline HTML report of a training run, built from the history files FilterMonitor saves.

Each snapshot lies in ``<log dir>/filterviz/history/step_<step>.npz`` (see
:mod:`lightning_filterviz.core.history`). The report reads them back and writes one
self-contained HTML page: line charts of the dead and dormant fractions and of filter
drift over the steps, the final filter grids and a filmstrip of filters across snapshots.
Images are embedded as base64 PNG data URIs, so the page can be mailed or archived alone.

This module is the entry point, :func:`build_report`; the work is done by
:mod:`lightning_filterviz.report.runs` (finding and reading the history, the charted
series), :mod:`lightning_filterviz.report.images` (charts, filter grids, filmstrips) and
:mod:`lightning_filterviz.report.html` (the page). None of them loads torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

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

    Returns:
        The path written.

    Raises:
        ReportError: for bad input (see :func:`load_runs`) or an output that cannot be written.

    Warns:
        ReportWarning: once for each history file skipped (corrupt, not a history file) and
            each layer left out of a file that lacks its arrays, naming the file and what is
            missing; the page lists them too, and draws the rest.
    """
    runs = load_runs(log_dir)
    target = Path(output) if output is not None else Path(log_dir) / REPORT_FILENAME
    if not isinstance(examples_filter, int) or isinstance(examples_filter, bool) or examples_filter < 0:
        raise ReportError(f"examples_filter must be a filter index >= 0, got {examples_filter!r}")
    sections = [run_html(run, filmstrip_layers, examples_filter) for run in runs]
    page = page_html(f"filterviz report: {log_dir}", sections)
    try:
        target.write_text(page, encoding="utf-8")
    except OSError as error:
        raise ReportError(f"cannot write {target}: {one_line(error)}") from error
    return target
