"""The Filters tab's gradient dormancy and feature visualizations, route by route, over the run
of ``tests/test_report_feature_vis.py`` (a conv with a filter whose weights get no gradient, a
frozen conv, feature visualizations of two convs at two validation runs).

The answers are held against the history files: gradient scores and verdicts per filter and
snapshot, the layer's gradient-dormant fraction, the frozen flag; the feature visualizations
sprite against the pictures the files keep, pixel for pixel. Also: a history without these
arrays, and feature visualization files that are damaged, half-written, added or removed
while the tab serves the run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lightning_filterviz import load_history
from lightning_filterviz.core.history import history_dir_of
from test_board import Board, frames, replace_file
from test_report_feature_vis import (
    DEAD,
    FEATVIS_STEPS,
    FILTERS,
    FROZEN,
    RUN,
    STEPS,
    featvis_files,
    rgb,
    shared_featvis_logdir,
    snapshots,
)


@pytest.fixture(scope="module")
def featvis_logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_featvis_logdir(tmp_path_factory)


@pytest.fixture(scope="module")
def board(featvis_logdir: Path) -> Board:
    return Board(featvis_logdir)


@pytest.fixture
def copied(featvis_logdir: Path, tmp_path: Path) -> Path:
    """A copy of the run's log directory, to change its files."""
    shutil.copytree(featvis_logdir, tmp_path / "logs")
    return tmp_path / "logs"


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("layer", ["0", "2"])
def test_layer_has_each_filters_gradient_score_and_verdict_where_read(board, featvis_logdir, layer):
    files = snapshots(featvis_logdir / RUN)
    answer = board.json("layer", run=RUN, layer=layer)
    assert answer["steps"] == list(STEPS)
    scores = np.asarray(answer["grad_score"], dtype=object)
    assert scores.shape == (FILTERS[layer], len(STEPS))
    assert all(value is None for value in scores[:, 0])  # no gradient before the first snapshot
    expected = np.stack([arrays[f"{layer}/grad_scores"] for arrays in files[1:]], axis=1)
    np.testing.assert_allclose(scores[:, 1:].astype(float), expected, rtol=1e-5)
    flags = [[None] + [index in arrays[f"{layer}/grad_dormant"] for arrays in files[1:]] for index in range(FILTERS[layer])]
    assert answer["grad_dormant"] == flags
    fractions = [len(arrays[f"{layer}/grad_dormant"]) / FILTERS[layer] for arrays in files[1:]]
    assert answer["grad_dormant_fraction"]["steps"] == list(STEPS[1:])
    np.testing.assert_allclose(answer["grad_dormant_fraction"]["values"], fractions, rtol=1e-5)
    assert answer["frozen"] is False


def test_the_filter_whose_weights_get_no_gradient_scores_zero_and_is_gradient_dormant(board):
    answer = board.json("filter", run=RUN, layer="2", filter=str(DEAD))
    assert answer["grad_score"] == [None, 0.0, 0.0, 0.0]
    assert answer["grad_dormant"] == [None, True, True, True]
    other = board.json("filter", run=RUN, layer="2", filter="0")
    assert all(score > 0 for score in other["grad_score"][1:]) and other["grad_dormant"] == [None, False, False, False]
    layer = board.json("layer", run=RUN, layer="2")
    assert answer["grad_score"] == layer["grad_score"][DEAD] and answer["grad_dormant"] == layer["grad_dormant"][DEAD]
    assert min(layer["grad_dormant_fraction"]["values"]) >= 1 / FILTERS["2"]


def test_a_frozen_conv_is_frozen_and_never_gradient_dormant(board):
    answer = board.json("layer", run=RUN, layer=FROZEN)
    assert answer["frozen"] is True
    assert answer["grad_dormant_fraction"] == {"steps": [], "values": []}
    assert {value for row in answer["grad_score"] for value in row} == {None}
    assert {value for row in answer["grad_dormant"] for value in row} == {None}
    assert board.json("filter", run=RUN, layer=FROZEN, filter="0")["frozen"] is True


# ---------------------------------------------------------------- feature visualizations


def test_layer_lists_the_steps_of_its_feature_visualizations(board):
    for layer in ("0", "2"):
        assert board.json("layer", run=RUN, layer=layer)["feature_vis_steps"] == list(FEATVIS_STEPS)
    assert board.json("layer", run=RUN, layer=FROZEN)["feature_vis_steps"] == []


@pytest.mark.parametrize("layer, channel", [("0", 0), ("0", 5), ("2", DEAD)])
def test_the_feature_vis_sprite_has_the_filters_picture_of_each_validation_run(board, featvis_logdir, layer, channel):
    files = featvis_files(featvis_logdir / RUN)
    answer = board.json("filter", run=RUN, layer=layer, filter=str(channel))["feature_vis"]
    assert answer["steps"] == list(FEATVIS_STEPS)
    assert answer["tile"] == list(files[0][f"{layer}/images"].shape[1:3])
    assert answer["url"] == f"featvis.png?run={RUN}&layer={layer}&filter={channel}"
    sprite = board.png("featvis.png", run=RUN, layer=layer, filter=str(channel))
    shown = frames(sprite, answer["tile"], answer["columns"], len(FEATVIS_STEPS))
    for frame, arrays in zip(shown, files):
        np.testing.assert_array_equal(frame, rgb(arrays[f"{layer}/images"])[channel])
    assert not np.array_equal(shown[0], shown[1])  # trained between the two


def test_a_layer_without_feature_visualizations_has_none(board):
    assert board.json("filter", run=RUN, layer=FROZEN, filter="0")["feature_vis"] is None
    assert "feature visualizations" in board.error("featvis.png", 404, run=RUN, layer=FROZEN, filter="0")


@pytest.mark.parametrize("channel", ["6", "-1", "x"])
def test_featvis_png_refuses_a_filter_out_of_range(board, channel):
    board.error("featvis.png", 400, run=RUN, layer="0", filter=channel)


# ---------------------------------------------------------------- histories changing


def test_feature_vis_files_damaged_half_written_added_and_removed(copied):
    history = history_dir_of(copied / RUN)
    board = Board(copied)
    served = lambda: board.json("filter", run=RUN, layer="0", filter="1")["feature_vis"]["steps"]  # noqa: E731
    assert served() == list(FEATVIS_STEPS)

    whole = (history / f"feature_vis_{FEATVIS_STEPS[0]:08d}.npz").read_bytes()
    arrays = load_history(history / f"feature_vis_{FEATVIS_STEPS[0]:08d}.npz")
    arrays["step"] = np.array(2, dtype=np.int64)
    added = history / "feature_vis_00000002.npz"
    np.savez(added, **arrays)
    replace_file(history / "feature_vis_00000005.npz", b"\x00not a history file" * 50)
    replace_file(history / f"feature_vis_{FEATVIS_STEPS[0]:08d}.npz", whole[: len(whole) // 2])
    assert served() == [2, FEATVIS_STEPS[1]]
    assert board.json("layer", run=RUN, layer="0")["feature_vis_steps"] == [2, FEATVIS_STEPS[1]]
    sprite = board.png("featvis.png", run=RUN, layer="0", filter="1")
    assert sprite.shape[1] == 2 * arrays["0/images"].shape[2]

    replace_file(history / f"feature_vis_{FEATVIS_STEPS[0]:08d}.npz", whole)
    added.unlink()
    assert served() == list(FEATVIS_STEPS)
    assert board.json("layer", run=RUN, layer="0")["feature_vis_steps"] == list(FEATVIS_STEPS)


def test_a_history_without_gradients_or_feature_visualizations(copied):
    history = history_dir_of(copied / RUN)
    for path in history.glob("feature_vis_*.npz"):
        path.unlink()
    for path in history.glob("step_*.npz"):
        kept = {
            key: value
            for key, value in load_history(path).items()
            if key.rsplit("/", 1)[-1] not in ("grad_scores", "grad_dormant", "frozen")
        }
        np.savez(path, **kept)
    board = Board(copied)
    layer = board.json("layer", run=RUN, layer="2")
    assert layer["grad_dormant_fraction"] == {"steps": [], "values": []} and layer["frozen"] is False
    assert {value for row in layer["grad_score"] for value in row} == {None}
    assert layer["feature_vis_steps"] == []
    answer = board.json("filter", run=RUN, layer="2", filter=str(DEAD))
    assert answer["feature_vis"] is None and answer["grad_dormant"] == [None] * len(STEPS)
    assert answer["weights"]["steps"] == list(STEPS)  # the rest is served as before


def test_gradient_scores_that_are_not_one_per_filter_are_not_served(copied):
    path = history_dir_of(copied / RUN) / "step_00000002.npz"
    arrays = load_history(path)
    arrays["2/grad_scores"] = np.zeros((2, 3), dtype=np.float32)
    np.savez(path, **arrays)
    layer = Board(copied).json("layer", run=RUN, layer="2")
    assert [row[2] for row in layer["grad_score"]] == [None] * FILTERS["2"]
    assert [row[2] for row in layer["grad_dormant"]] == [None] * FILTERS["2"]
    assert layer["grad_dormant_fraction"]["steps"] == [1, 3]
