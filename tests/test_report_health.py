"""The health signals in the offline report: the summary table's columns and the effective
rank, srank and CKA charts, held against the history files a hand-made run writes; older
history files without the signals, a damaged signal and a CKA that could not be computed."""

from __future__ import annotations

import shutil
import warnings
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lightning_filterviz import FilterVisualizer, Sink, load_history
from lightning_filterviz.report.build import ReportWarning, build_report, load_runs
from lightning_filterviz.report.runs import HEALTH_SIGNALS, health_series
from test_report import images_by_alt

STEPS = (0, 10, 20, 30)
LAYERS = ("0", "2")
CHARTS = {"effective_rank": "Effective rank", "srank": "srank", "cka_to_first": "CKA to the first snapshot"}
COLUMNS = {"effective_rank": "effective rank", "srank": "srank", "cka_to_first": "CKA to first"}


class _ScalarSink(Sink):
    """Takes the scalars and drops them: the report reads only the history."""

    def add_scalars(self, values, step) -> None:
        pass


def write_run(log_dir: Path) -> Path:
    """Snapshot a two-conv model whose first conv turns between snapshots, its history under
    ``log_dir`` as FilterMonitor keeps it; return ``log_dir``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1), nn.ReLU())
    probe = torch.rand(4, 3, 16, 16)
    history = log_dir / "filterviz" / "history"
    visualizer = FilterVisualizer(_ScalarSink(), history_dir=str(history))
    for step in STEPS:
        visualizer.snapshot(model, probe, step).result()
        with torch.no_grad():
            model[0].weight.add_(0.3 * torch.randn_like(model[0].weight))
    visualizer.close()
    return log_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("health") / "run")


def history_file(log_dir: Path, step: int) -> Path:
    return log_dir / "filterviz" / "history" / f"step_{step:08d}.npz"


def rewrite(log_dir: Path, step: int, change) -> None:
    """Load one history file, let ``change`` edit its arrays, save them back as a writer would."""
    path = history_file(log_dir, step)
    arrays = load_history(path)
    change(arrays)
    np.savez(path, **arrays)


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def report_page(log_dir: Path, tmp_path: Path) -> str:
    return build_report(log_dir, tmp_path / "report.html").read_text(encoding="utf-8")


class _TableParser(HTMLParser):
    """The cells of the page's first table, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._tables = 0
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "table":
            self._tables += 1
        elif self._tables == 1 and tag == "tr":
            self.rows.append([])
        elif self._tables == 1 and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data) -> None:
        if self._cell is not None:
            self._cell.append(data)


def summary_table(page: str) -> dict[str, dict[str, str]]:
    """layer -> column heading -> cell text, of the run's summary table."""
    parser = _TableParser()
    parser.feed(page)
    headings, *rows = parser.rows
    return {row[0]: dict(zip(headings, row)) for row in rows}


def test_the_summary_table_shows_the_last_snapshots_health_signals(run_dir, tmp_path):
    table = summary_table(report_page(run_dir, tmp_path))
    last = load_history(history_file(run_dir, STEPS[-1]))
    assert set(table) == set(LAYERS)
    for layer in LAYERS:
        assert float(table[layer]["effective rank"]) == pytest.approx(float(last[f"{layer}/effective_rank"]), abs=0.005)
        assert int(table[layer]["srank"]) == int(last[f"{layer}/srank"])
        assert float(table[layer]["CKA to first"]) == pytest.approx(float(last[f"{layer}/cka_to_first"]), abs=5e-4)
    # The first conv turned between snapshots: its features moved away from the first's.
    assert float(table["0"]["CKA to first"]) < 1.0


def test_each_health_chart_is_an_embedded_png_with_its_caption(run_dir, tmp_path):
    page = report_page(run_dir, tmp_path)
    images = images_by_alt(page)
    for heading in CHARTS.values():
        assert f"<h3>{heading}</h3>" in page
        assert images[heading].width > 300 and images[heading].height > 200
    # After the drift chart, in the order of the table's columns.
    positions = [page.index(f"<h3>{heading}</h3>") for heading in ("Filter drift", *CHARTS.values())]
    assert positions == sorted(positions)
    assert "learns nothing new" in page and "collapse onto a few directions" in page


def test_the_series_are_the_history_values_at_each_step(run_dir):
    (run,) = load_runs(run_dir)
    files = [load_history(history_file(run_dir, step)) for step in STEPS]
    for signal in HEALTH_SIGNALS:
        expected = {layer: (list(STEPS), [float(arrays[f"{layer}/{signal}"]) for arrays in files]) for layer in LAYERS}
        assert health_series(run, signal) == expected
    cka = health_series(run, "cka_to_first")
    assert all(values[0] == 1.0 for _, values in cka.values())  # exactly, at the first snapshot
    assert all(value < 1.0 for value in cka["0"][1][1:])


def test_an_older_history_without_the_signals_gets_notes_instead_of_charts(run_dir, tmp_path):
    log_dir = copy_run(run_dir, tmp_path)
    for step in STEPS:
        rewrite(log_dir, step, _drop_health)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReportWarning)  # an older file is not a damaged one
        page = report_page(log_dir, tmp_path)
        (run,) = load_runs(log_dir)
    assert all(health_series(run, signal) == {} for signal in HEALTH_SIGNALS)
    images = images_by_alt(page)
    assert {"Dead filters", "Dormant filters", "Filter drift"} <= set(images)
    for heading in CHARTS.values():
        assert heading not in images and f"<h3>{heading}</h3>" in page
    assert page.count("history files written before the health signals lack it") == len(CHARTS)
    table = summary_table(page)
    assert all(table[layer][column] == "–" for layer in LAYERS for column in COLUMNS.values())
    assert table["0"]["filters"] == "8"


def _drop_health(arrays: dict[str, np.ndarray]) -> None:
    for layer in LAYERS:
        for signal in HEALTH_SIGNALS:
            del arrays[f"{layer}/{signal}"]


def test_a_damaged_signal_is_left_out_with_a_warning_and_the_rest_is_drawn(run_dir, tmp_path):
    log_dir = copy_run(run_dir, tmp_path)
    rewrite(log_dir, STEPS[1], lambda arrays: arrays.update({"0/srank": np.array(["three"])}))
    with pytest.warns(ReportWarning, match=r"0/srank of shape \(1,\) .* not one number: the srank of 0 at step 10"):
        (run,) = load_runs(log_dir)
    assert health_series(run, "srank")["0"][0] == [0, 20, 30]
    assert health_series(run, "srank")["2"][0] == list(STEPS)
    assert health_series(run, "effective_rank")["0"][0] == list(STEPS)  # the layer's other signals stay


def test_a_cka_that_could_not_be_computed_is_left_out_of_the_chart_and_the_table(run_dir, tmp_path):
    log_dir = copy_run(run_dir, tmp_path)
    rewrite(log_dir, STEPS[-1], lambda arrays: arrays.update({"2/cka_to_first": np.array(np.nan)}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReportWarning)  # NaN is what the writer keeps for "no CKA"
        page = report_page(log_dir, tmp_path)
        (run,) = load_runs(log_dir)
    assert health_series(run, "cka_to_first")["2"][0] == list(STEPS[:-1])
    table = summary_table(page)
    assert table["2"]["CKA to first"] == "–" and table["0"]["CKA to first"] != "–"
    assert "CKA to the first snapshot" in images_by_alt(page)
