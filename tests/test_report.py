"""The offline HTML report: ``python -m lightning_filterviz report <log_dir>``, built from history files."""

from __future__ import annotations

import base64
import dataclasses
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import Classifier, FilterMonitor, RandomImages, pl, trainer_kwargs

from lightning_filterviz import FilterVisualizer
from lightning_filterviz.core import filters, tiles
from lightning_filterviz.drawing import render
from lightning_filterviz.__main__ import main
from lightning_filterviz.core.history import HistoryWriter
from lightning_filterviz.report.build import (
    REPORT_FILENAME,
    ReportError,
    build_report,
    drift_series,
    fraction_series,
    load_runs,
)

STEPS = [0, 10, 20, 30]
DEAD_CHANNEL = 5
CHART_HEADINGS = (
    "Dead filters", "Dormant filters", "Filter drift", "Effective rank", "srank", "CKA to the first snapshot"
)
IMAGE = re.compile(r'alt="([^"]*)" src="data:image/png;base64,([^"]+)"')


def small_cnn() -> nn.Sequential:
    """conv(3->6) -> BN -> ReLU -> conv(6->8) -> ReLU, one filter of the second conv dead."""
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU()
    )
    with torch.no_grad():
        model[3].bias[DEAD_CHANNEL] = -1e4  # never above 0 after the ReLU: dead
    return model


def write_history(log_dir: Path, drop_drift: tuple[str, ...] = ()) -> Path:
    """Snapshot a model whose weights change between steps; save each snapshot as a history file.

    Args:
        log_dir: the trainer log dir; history goes to ``log_dir/filterviz/history``.
        drop_drift: layers whose drift is left out of the files (as an older writer would).

    Returns:
        The history directory.
    """
    torch.manual_seed(0)
    model = small_cnn()
    probe = torch.randn(4, 3, 10, 10)
    visualizer = FilterVisualizer(log_dir / "images", dead_patience=2)
    history = log_dir / "filterviz" / "history"
    writer = HistoryWriter(history)
    for step in STEPS:
        snapshot = visualizer.snapshot(model, probe, step, publish=False).result()
        kept = {name: drift for name, drift in snapshot.drift.items() if name not in drop_drift}
        ratios = {name: ratio for name, ratio in snapshot.weight_norm_ratio.items() if name not in drop_drift}
        writer.write(dataclasses.replace(snapshot, drift=kept, weight_norm_ratio=ratios))
        with torch.no_grad():  # "training": the filters turn a little between snapshots
            for parameter in model.parameters():
                parameter.add_(0.2 * torch.randn_like(parameter))
    return history


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``lightning_logs`` with two runs: ``photo/version_0``, and ``photo/version_1`` without drift of ``3``."""
    root = tmp_path_factory.mktemp("report") / "lightning_logs"
    write_history(root / "photo" / "version_0")
    write_history(root / "photo" / "version_1", drop_drift=("3",))
    return root


@pytest.fixture(scope="module")
def report(logs: Path) -> tuple[Path, str]:
    path = build_report(logs / "photo" / "version_0")
    return path, path.read_text(encoding="utf-8")


# The filter page's images (one layer's filters over the run): tested in test_report_filter_page.py.
FILTER_PAGE_IMAGE = re.compile(r"^(weights|feature maps|curves|dataset examples|feature visualizations) of filter \d+")


def report_figures(page: str) -> set[str]:
    """The alt texts of the page's images, the filter page's left out."""
    return {alt for alt in images_by_alt(page) if not FILTER_PAGE_IMAGE.match(alt)}


def images_by_alt(page: str) -> dict[str, Image.Image]:
    """Every embedded image, decoded, by its alt text."""
    images = {}
    for alt, payload in IMAGE.findall(page):
        picture = Image.open(io.BytesIO(base64.b64decode(payload)))
        picture.load()
        assert picture.format == "PNG"
        images[alt] = picture
    return images


def test_report_has_every_figure_with_an_embedded_png(report, logs):
    path, page = report
    assert path == logs / "photo" / "version_0" / REPORT_FILENAME
    assert f"<title>filterviz report: {logs / 'photo' / 'version_0'}</title>" in page
    for heading in (*CHART_HEADINGS, "Final filters: 0", "Final filters: 3", "Filmstrip: 0"):
        assert f"<h3>{heading}</h3>" in page
    assert "steps: 0, 10, 20, 30" in page
    # Snapshots without gradients read: a note instead of the gradient-dormant chart.
    assert "<h3>Gradient-dormant filters</h3>" in page and "No snapshot recorded gradient scores" in page
    assert "<script" not in page and 'src="http' not in page
    images = images_by_alt(page)
    assert report_figures(page) == {*CHART_HEADINGS, "filters of 0", "filters of 3", "filmstrip of 0"}
    assert page.count("data:image/png;base64,") == len(images)


def test_final_grid_frames_the_dead_filter_in_red(report):
    images = images_by_alt(report[1])
    red = np.array([255, 0, 0], dtype=np.uint8)
    assert (np.asarray(images["filters of 3"].convert("RGB")) == red).all(axis=2).any()
    assert not (np.asarray(images["filters of 0"].convert("RGB")) == red).all(axis=2).any()


def test_filmstrip_has_a_row_per_snapshot(report, logs):
    images = images_by_alt(report[1])
    strip = np.asarray(images["filmstrip of 0"].convert("RGB"))
    history = sorted((logs / "photo" / "version_0" / "filterviz" / "history").glob("step_*.npz"))
    assert len(history) == len(STEPS)
    # The package's filmstrip of the layer's filters read back from each snapshot's file.
    rows = []
    for path in history:
        with np.load(path) as arrays:
            rows.append(tiles.to_uint8(filters.normalize_filters(arrays["0/filters"])).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(strip, render.filmstrip(rows))
    assert strip.shape[0] == len(STEPS) * (render.FILMSTRIP_TILE_PIXELS + 2)


def test_chart_series_come_from_the_history(logs):
    (run,) = load_runs(logs / "photo" / "version_0")
    assert run.steps == STEPS and run.layers == ["0", "3"]
    # dead_patience=2: off at step 0 once, dead from the second snapshot on.
    assert fraction_series(run, "dead")["3"] == (STEPS, [0.0, 1 / 8, 1 / 8, 1 / 8])
    assert fraction_series(run, "dead")["0"] == (STEPS, [0.0] * 4)
    assert all(fraction >= 1 / 8 for fraction in fraction_series(run, "dormant")["3"][1])
    drift = drift_series(run)
    assert drift["3"][0] == STEPS and drift["3"][1][0] == pytest.approx(0.0, abs=1e-6)
    assert all(0.0 < value <= 2.0 for value in drift["3"][1][1:])


def test_a_layer_without_drift_is_left_out_of_the_drift_chart(logs, tmp_path):
    (run,) = load_runs(logs / "photo" / "version_1")
    assert set(drift_series(run)) == {"0"}
    page = build_report(logs / "photo" / "version_1", tmp_path / "report.html").read_text(encoding="utf-8")
    assert set(images_by_alt(page)) >= {*CHART_HEADINGS, "filters of 3"}


def test_no_drift_at_all_keeps_the_other_figures(tmp_path):
    write_history(tmp_path / "run", drop_drift=("0", "3"))
    page = build_report(tmp_path / "run").read_text(encoding="utf-8")
    assert "<h3>Filter drift</h3>" in page and "No snapshot recorded filter drift." in page
    shown = {*CHART_HEADINGS, "filters of 0", "filters of 3", "filmstrip of 0"} - {"Filter drift"}
    assert report_figures(page) == shown


@pytest.mark.parametrize("where", ["version_0", "version_0/filterviz", "version_0/filterviz/history"])
def test_any_directory_down_to_the_history_is_accepted(logs, tmp_path, where):
    page = build_report(logs / "photo" / where, tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.count("<h2>Run:") == 1 and "steps: 0, 10, 20, 30" in page


def test_a_parent_of_several_runs_gets_one_section_per_run(logs, tmp_path):
    page = build_report(logs, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<h2>Run: photo/version_0</h2>" in page and "<h2>Run: photo/version_1</h2>" in page
    assert page.count("<h3>Dead filters</h3>") == 2


def test_cli_writes_the_report_and_prints_its_path(logs, tmp_path, capsys):
    output = tmp_path / "out.html"
    log_dir = logs / "photo" / "version_0"
    assert main(["report", str(log_dir), "-o", str(output), "--filmstrip-layers", "0", "3"]) == 0
    assert capsys.readouterr().out == f"{output}\n"
    page = output.read_text(encoding="utf-8")
    assert "<h3>Filmstrip: 0</h3>" in page and "<h3>Filmstrip: 3</h3>" in page


def test_report_of_a_lightning_run_that_saved_its_history(tmp_path):
    model = Classifier()
    with torch.no_grad():
        model.net[3].bias[2] = -1e4  # net.3 -> ReLU: channel 2 dead
    trainer = pl.Trainer(callbacks=[FilterMonitor(every_n_steps=2)], **trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(model, datamodule=RandomImages())
    page = build_report(tmp_path).read_text(encoding="utf-8")  # the parent of tb/version_0
    assert "<h2>Run: tb/version_0</h2>" in page and "steps: 0, 2" in page
    drawn = {*CHART_HEADINGS, "filters of net.0", "filters of net.3", "filmstrip of net.0"}
    # The fit validated, and its optimizer steps before the second snapshot had gradients.
    assert report_figures(page) == drawn | {"Dataset examples: net.0, filter 0", "Gradient-dormant filters"}
    (run,) = load_runs(trainer.log_dir)
    assert fraction_series(run, "dead")["net.3"][1][-1] == 1 / 8
    # Channel 2 of net.3 never fires: no gradient reaches its weights.
    assert fraction_series(run, "grad_dormant")["net.3"] == ([2], [1 / 8])


def _foreign(root: Path) -> Path:
    path = root / "filterviz" / "history" / "step_00000000.npz"
    path.parent.mkdir(parents=True)
    np.savez(path, x=np.zeros(3))
    return path


def _garbage(root: Path) -> Path:
    path = root / "filterviz" / "history" / "step_00000000.npz"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a zip file at all")
    return path


def _all_truncated(root: Path) -> Path:
    # One damaged file among readable ones is skipped (tests/test_files.py); with none readable, nothing is drawn.
    paths = sorted(write_history(root).glob("step_*.npz"))
    for path in paths:
        path.write_bytes(path.read_bytes()[:200])
    return paths[0]


def _file_not_dir(root: Path) -> Path:
    path = root / "file.txt"
    path.write_text("not a log dir")
    return path


# Each case makes its bad input under tmp_path and returns the argument to pass.
@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda root: root / "missing", "does not exist"),
        (lambda root: root, "filterviz/history/step_*.npz written by FilterMonitor"),
        (_file_not_dir, "is not a directory"),
        (lambda root: _foreign(root).parents[2], "step_00000000.npz is not a lightning_filterviz history file"),
        (lambda root: _garbage(root).parents[2], "step_00000000.npz is not a lightning_filterviz history file"),
        (lambda root: _all_truncated(root).parents[2], "step_00000000.npz is corrupt"),
    ],
    ids=["missing", "empty", "file", "foreign", "garbage", "truncated"],
)
def test_bad_input_exits_2_with_one_stderr_line(tmp_path, capsys, make, expected):
    argument = make(tmp_path)
    assert main(["report", str(argument)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("filterviz report: ")
    assert expected in lines[0]
    assert not list(tmp_path.rglob(REPORT_FILENAME))


def test_build_report_raises_report_error(tmp_path):
    with pytest.raises(ReportError, match="does not exist"):
        build_report(tmp_path / "missing")
    assert issubclass(ReportError, ValueError)


def test_no_arguments_prints_the_commands_and_exits_2(capsys):
    assert main([]) == 2
    printed = capsys.readouterr().err
    assert printed.startswith("usage: python -m lightning_filterviz")
    assert "report    write a self-contained HTML report" in printed


def test_module_entry_point_reports_a_foreign_file_on_one_line(tmp_path):
    path = _foreign(tmp_path)
    command = [sys.executable, "-m", "lightning_filterviz", "report", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"filterviz report: {path} is not a lightning_filterviz history file (format 'lightning_filterviz.history/1')"
    ]


def test_console_script_takes_the_report_arguments_directly(logs, tmp_path, monkeypatch, capsys):
    # The installed filterviz-report script calls main() with no argv: it reads sys.argv itself.
    output = tmp_path / "out.html"
    argv = ["/venv/bin/filterviz-report", str(logs / "photo" / "version_0"), "-o", str(output)]
    monkeypatch.setattr(sys, "argv", argv)
    assert main() == 0
    assert capsys.readouterr().out == f"{output}\n"
    assert "<h3>Dead filters</h3>" in output.read_text(encoding="utf-8")
