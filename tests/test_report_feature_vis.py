"""Gradient dormancy and feature visualizations in the offline report, over a run the engine
writes by hand: a conv with a planted dead filter (so its weights get no gradient) and a
frozen conv, feature visualizations of two convs at two validation runs.

The feature visualizations grid is held, pixel for pixel, against ``response_grid`` of the
file's arrays and against the run's TensorBoard image of the same step; a filter's strip
against the pictures the files keep; the summary table's column and the chart's series
against the history's verdicts. Also: histories from before these arrays, a damaged file and
a file that lacks a layer's arrays.

The run is shared with ``tests/test_board_feature_vis.py`` (made once per session).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from conftest import read_events
from lightning_filterviz import FilterVisualizer, load_history
from lightning_filterviz.core.history import history_dir_of
from lightning_filterviz.drawing.responses import response_grid
from lightning_filterviz.report.build import ReportWarning, build_report, fraction_series, load_runs
from lightning_filterviz.report.filter_page import FRAME_GAP, filter_anchor
from test_report_filter_page import frames_of, parsed
from test_report_health import summary_table

RUN = "featvis_run"
STEPS = (0, 1, 2, 3)
FEATVIS_STEPS = (1, 3)
FEATVIS_LAYERS = ("0", "2")
FILTERS = {"0": 6, "2": 5, "4": 4}
FROZEN = "4"
DEAD = 3  # of conv "2": its ReLU never fires, so its weights get no gradient
ACTIVE = 1


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, FILTERS["0"], 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(FILTERS["0"], FILTERS["2"], 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(FILTERS["2"], FILTERS["4"], 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(FILTERS["4"], 3),
    )
    with torch.no_grad():
        for conv in (model[0], model[2], model[4]):
            conv.bias.fill_(0.2)  # every other filter fires on the probe
        model[2].bias[DEAD] = -1000.0
    model[4].weight.requires_grad_(False)
    return model


def make_featvis_run(root: Path) -> Path:
    """Four snapshots of ``_model`` trained by SGD between them, gradients read before each
    but the first, feature visualizations of convs 0 and 2 at steps 1 and 3; returns the log dir."""
    run_dir = root / RUN
    model = _model()
    probe = torch.rand(2, 3, 16, 16)
    optimizer = torch.optim.SGD([parameter for parameter in model.parameters() if parameter.requires_grad], lr=0.1)
    with SummaryWriter(str(run_dir)) as writer:
        visualizer = FilterVisualizer(
            writer, history_dir=history_dir_of(run_dir), featvis_layers=list(FEATVIS_LAYERS), views_every=2
        )
        for step in STEPS:
            if step:
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(probe), torch.tensor([0, 1])).backward()
                visualizer.read_gradients(model)
                optimizer.step()
            visualizer.snapshot(model, probe, step)
            if step in FEATVIS_STEPS:
                visualizer.visualize_features(model, probe, step, steps=8)
        visualizer.close()
    return root


def shared_featvis_logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The log directory of the run, made once per session for this module and test_board_feature_vis."""
    root = tmp_path_factory.getbasetemp() / "featvis_logs"
    if not (root / RUN / "made").exists():
        shutil.rmtree(root, ignore_errors=True)
        make_featvis_run(root)
        (root / RUN / "made").touch()
    return root


@pytest.fixture(scope="module")
def featvis_logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_featvis_logdir(tmp_path_factory)


@pytest.fixture(scope="module")
def run_dir(featvis_logdir: Path) -> Path:
    return featvis_logdir / RUN


@pytest.fixture(scope="module")
def report(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReportWarning)
        return build_report(run_dir, tmp_path_factory.mktemp("report") / "report.html", filter_layer="2")


def snapshots(run_dir: Path) -> list[dict[str, np.ndarray]]:
    return [load_history(history_dir_of(run_dir) / f"step_{step:08d}.npz") for step in STEPS]


def featvis_files(run_dir: Path) -> list[dict[str, np.ndarray]]:
    return [load_history(history_dir_of(run_dir) / f"feature_vis_{step:08d}.npz") for step in FEATVIS_STEPS]


def rgb(images: np.ndarray) -> np.ndarray:
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


# ---------------------------------------------------------------- the run


def test_the_run_has_what_the_report_shows(run_dir):
    files = snapshots(run_dir)
    assert all(f"{layer}/grad_scores" not in files[0] for layer in FILTERS)  # no gradients before the first
    for arrays in files[1:]:
        assert DEAD in arrays["2/grad_dormant"] and ACTIVE not in arrays["2/grad_dormant"]
        assert f"{FROZEN}/grad_scores" not in arrays and bool(arrays[f"{FROZEN}/frozen"])
    for arrays in featvis_files(run_dir):
        assert list(arrays["layers"]) == list(FEATVIS_LAYERS)
        assert arrays["0/filters"].shape[1] == 3 and arrays["2/filters"].shape[1] == 1  # colour, grey
    first, last = featvis_files(run_dir)
    assert not np.array_equal(first["0/images"], last["0/images"])  # trained between them


# ---------------------------------------------------------------- gradient dormancy


def test_the_summary_table_gives_the_last_snapshots_gradient_dormant_filters(run_dir, report):
    table = summary_table(report.read_text(encoding="utf-8"))
    last = snapshots(run_dir)[-1]
    for layer in ("0", "2"):
        assert table[layer]["grad-dormant"] == f"{len(last[f'{layer}/grad_dormant'])}/{FILTERS[layer]}"
    assert table["2"]["grad-dormant"].startswith(str(len(last["2/grad_dormant"]))) and len(last["2/grad_dormant"]) >= 1
    assert table[FROZEN]["grad-dormant"] == "frozen"
    assert list(table["0"]) == [
        "layer", "filters", "dead", "dormant", "grad-dormant", "mean drift", "effective rank", "srank", "CKA to first"
    ]


def test_the_gradient_dormant_chart_has_each_read_snapshots_fraction(run_dir, report):
    (run,) = load_runs(run_dir)
    files = snapshots(run_dir)
    expected = {
        layer: (list(STEPS[1:]), [len(arrays[f"{layer}/grad_dormant"]) / FILTERS[layer] for arrays in files[1:]])
        for layer in ("0", "2")
    }
    assert fraction_series(run, "grad_dormant") == expected
    assert all(fraction >= 1 / FILTERS["2"] for fraction in expected["2"][1])
    page = parsed(report)
    chart = [image for image in page.images if image.alt == "Gradient-dormant filters"]
    assert len(chart) == 1 and chart[0].pixels.shape[1] > 300
    text = report.read_text(encoding="utf-8")
    assert "no longer learns" in text and f"Frozen, so not drawn (their weights do not require grad): {FROZEN}." in text
    # After the dormant chart, before the drift chart.
    positions = [text.index(f"<h3>{heading}</h3>") for heading in ("Dormant filters", "Gradient-dormant filters", "Filter drift")]
    assert positions == sorted(positions)


def _purple(pixels: np.ndarray) -> int:
    """Pixels of the gradient-dormant band (#8e24aa at its alpha over white)."""
    colour = np.array([221, 189, 229])
    return int((np.abs(pixels.astype(int) - colour).max(axis=-1) <= 8).sum())


def test_the_gradient_dormant_filters_score_curve_is_shaded_purple(report):
    page = parsed(report)
    dormant = page.image(filter_anchor("2", DEAD), f"curves of filter {DEAD}")
    active = page.image(filter_anchor("2", ACTIVE), f"curves of filter {ACTIVE}")
    assert _purple(dormant) > 500
    assert _purple(active) == 0
    assert "gradient-dormant (purple)" in page.text[filter_anchor("2", DEAD)]


# ---------------------------------------------------------------- feature visualizations


@pytest.mark.parametrize("layer", FEATVIS_LAYERS)
def test_the_feature_vis_grid_is_the_latest_files_response_grid_and_the_tensorboard_image(run_dir, report, layer):
    latest = featvis_files(run_dir)[-1]
    filters, images = latest[f"{layer}/filters"], latest[f"{layer}/images"]
    shown = parsed(report).image("", f"feature visualizations of {layer}")
    np.testing.assert_array_equal(shown, response_grid(filters, filters.shape[1] == 3, rgb(images)))
    logged = read_events(run_dir).images[f"filterviz/feature_vis/{layer}"][FEATVIS_STEPS[-1]]
    np.testing.assert_array_equal(shown, logged)
    text = report.read_text(encoding="utf-8")
    assert f"<h3>Feature visualizations: {layer}</h3>" in text
    assert f"made with the weights of step {FEATVIS_STEPS[-1]}" in text and "raise the filter&#x27;s mean response" in text


def test_a_filters_strip_has_its_picture_at_each_validation_run(run_dir, report):
    page = parsed(report)
    files = featvis_files(run_dir)
    for index in (0, DEAD):
        section = filter_anchor("2", index)
        strip = page.image(section, f"feature visualizations of filter {index}")
        shown = frames_of(strip, len(FEATVIS_STEPS), FRAME_GAP)
        for frame, arrays in zip(shown, files):
            np.testing.assert_array_equal(frame, rgb(arrays["2/images"])[index])
        assert "2 validation runs" in page.text[section]
    assert not np.array_equal(*frames_of(page.image(filter_anchor("2", 0), "feature visualizations of filter 0"), 2, FRAME_GAP))
    assert page.alts(filter_anchor("2", 0))[-2:] == ["feature visualizations of filter 0", "curves of filter 0"]


def test_a_frozen_conv_without_feature_visualizations_says_why_it_has_no_gradient_curve(report, run_dir, tmp_path):
    assert f"Feature visualizations: {FROZEN}" not in report.read_text(encoding="utf-8")
    page = parsed(build_report(run_dir, tmp_path / "report.html", filter_layer=FROZEN))
    section = filter_anchor(FROZEN, 0)
    assert "The conv is frozen (its weight does not require grad)" in page.text[section]
    assert page.alts(section) == ["weights of filter 0", "feature maps of filter 0", "curves of filter 0"]


# ---------------------------------------------------------------- older and damaged histories


def test_an_older_history_without_gradients_or_feature_visualizations_still_builds(run_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    for path in history_dir_of(old).glob("feature_vis_*.npz"):
        path.unlink()
    for path in history_dir_of(old).glob("step_*.npz"):
        arrays = {
            key: value
            for key, value in load_history(path).items()
            if key.rsplit("/", 1)[-1] not in ("grad_scores", "grad_dormant", "frozen")
        }
        np.savez(path, **arrays)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReportWarning)  # older files are not damaged ones
        page = parsed(build_report(old, tmp_path / "report.html", filter_layer="2"))
        (run,) = load_runs(old)
    assert fraction_series(run, "grad_dormant") == {}
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "No snapshot recorded gradient scores" in text and "Feature visualizations" not in text
    assert "Gradient-dormant filters" not in [image.alt for image in page.images]
    table = summary_table(text)
    assert {table[layer]["grad-dormant"] for layer in FILTERS} == {"–"}
    assert "No snapshot read this layer's gradients" in page.text[filter_anchor("2", 0)]


def test_a_damaged_feature_vis_file_is_skipped_with_a_warning_and_the_rest_drawn(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    history = history_dir_of(copy)
    damaged = history / f"feature_vis_{FEATVIS_STEPS[-1]:08d}.npz"
    damaged.write_bytes(damaged.read_bytes()[:300])
    lacking = history / f"feature_vis_{FEATVIS_STEPS[0]:08d}.npz"
    arrays = load_history(lacking)
    del arrays["2/filters"]
    np.savez(lacking, **arrays)
    with pytest.warns(ReportWarning) as caught:
        page = parsed(build_report(copy, tmp_path / "report.html", filter_layer="0"))
    messages = [str(warning.message) for warning in caught]
    assert any(str(damaged) in message and "corrupt" in message for message in messages), messages
    assert any(str(lacking) in message and "lacks 2/filters" in message for message in messages), messages
    # Layer 0 is drawn from the file that is left, the step 1 one; layer 2 from none.
    first = load_history(lacking)
    shown = page.image("", "feature visualizations of 0")
    np.testing.assert_array_equal(shown, response_grid(first["0/filters"], True, first["0/images"]))
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert f"made with the weights of step {FEATVIS_STEPS[0]}" in text and "Feature visualizations: 2" not in text
    strip = page.image(filter_anchor("0", 0), "feature visualizations of filter 0")
    np.testing.assert_array_equal(strip, first["0/images"][0])  # one frame


def test_gradient_scores_that_are_not_one_per_filter_are_left_out_with_a_warning(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    path = history_dir_of(copy) / "step_00000002.npz"
    arrays = load_history(path)
    arrays["2/grad_scores"] = np.zeros((2, 3), dtype=np.float32)
    np.savez(path, **arrays)
    with pytest.warns(ReportWarning, match=r"step_00000002\.npz holds 2/grad_scores of shape \(2, 3\).*gradient dormancy of 2 at step 2"):
        (run,) = load_runs(copy)
    series = fraction_series(run, "grad_dormant")
    assert series["2"][0] == [1, 3] and series["0"][0] == [1, 2, 3]  # the layer's other arrays and layers stay
