"""The Filters tab's server side (the TensorBoard plugin), route by route, over histories the
engine writes: a run trained with FilterMonitor and runs snapshotted by hand with
FilterVisualizer, read through TensorBoard's own data provider.

What the routes answer is held against the history files and the monitor's verdicts (steps,
statistics, filter states), and the weight sprites against the TensorBoard images of the
same steps, pixel for pixel. Also: bad requests, runs outside the log directory, history
files that vanish, are damaged or half-written, a history that grows while it is served,
no torch in TensorBoard, and a loader that keeps a failing tab out of TensorBoard.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.plugins import base_plugin
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from werkzeug.test import Client

from conftest import Classifier, FilterMonitor, RandomImages, pl, read_events, trainer_kwargs
from lightning_filterviz import FilterVisualizer, load_history
from lightning_filterviz.board import FilterVizLoader
from lightning_filterviz.board.plugin import FilterVizPlugin
from lightning_filterviz.core.history import history_dir_of
from lightning_filterviz.core.tiles import FRAME_PIXELS, GRID_PADDING, tile_origin

ALIVE, DORMANT, DEAD = 0, 1, 2
DEAD_FILTER = 4  # of the trained run's first conv: its bias keeps its ReLU at zero
TRAINED_RUN = "tb/version_0"
HAND_RUN = "hand"
HAND_LAYER = "0"
SERIES = ("state", "drift", "norm_ratio", "mean_activation", "dormant_score", "grad_score", "grad_dormant")


class Board:
    """The plugin over ``logdir`` as TensorBoard builds it, its routes called as WSGI apps."""

    def __init__(self, logdir: Path) -> None:
        multiplexer = EventMultiplexer()
        multiplexer.AddRunsFromDirectory(str(logdir))
        multiplexer.Reload()
        provider = MultiplexerDataProvider(multiplexer, str(logdir))
        self.plugin = FilterVizPlugin(base_plugin.TBContext(logdir=str(logdir), data_provider=provider))
        self.apps = self.plugin.get_plugin_apps()

    def get(self, route: str, **query: Any) -> Any:
        return Client(self.apps[f"/{route}"]).get(f"/{route}", query_string=query)

    def json(self, route: str, **query: Any) -> dict[str, Any]:
        response = self.get(route, **query)
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.mimetype == "application/json"
        return response.get_json()

    def png(self, route: str, **query: Any) -> np.ndarray:
        response = self.get(route, **query)
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.mimetype == "image/png"
        image = Image.open(io.BytesIO(response.get_data()))
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))

    def error(self, route: str, code: int, **query: Any) -> str:
        response = self.get(route, **query)
        assert response.status_code == code, (route, query, response.status_code, response.get_data(as_text=True))
        return response.get_json()["error"]


def frames(sprite: np.ndarray, tile: list[int], columns: int, count: int) -> list[np.ndarray]:
    """The ``count`` frames of a sprite laid out as the API says."""
    height, width = tile
    rows = -(-count // columns)
    assert sprite.shape[:2] == (rows * height, min(columns, count) * width)
    found = []
    for index in range(count):
        row, column = divmod(index, columns)
        found.append(sprite[row * height : (row + 1) * height, column * width : (column + 1) * width])
    return found


def tile_of(grid: np.ndarray, index: int, tile: list[int]) -> np.ndarray:
    """Tile ``index`` of a TensorBoard grid image of framed ``tile``-sized tiles, without its frame."""
    height, width = tile
    columns = (grid.shape[1] - GRID_PADDING) // (width + 2 * FRAME_PIXELS + GRID_PADDING)
    top, left = tile_origin(index, height, width, columns)
    return grid[top : top + height, left : left + width]


def history_of(run_dir: Path) -> list[dict[str, np.ndarray]]:
    """The run's snapshot files, by step."""
    return [load_history(path) for path in sorted(history_dir_of(run_dir).glob("step_*.npz"))]


def examples_of(run_dir: Path) -> list[dict[str, np.ndarray]]:
    """The run's validation-examples files, by step."""
    found = []
    for path in sorted(history_dir_of(run_dir).glob("validation_examples_*.npz")):
        with np.load(path, allow_pickle=False) as data:
            found.append({key: data[key] for key in data.files})
    return found


def maps_steps_of(run_dir: Path, layer: str) -> list[int]:
    """The steps of the run's snapshot files that hold ``layer``'s feature maps."""
    return [int(arrays["step"]) for arrays in history_of(run_dir) if f"{layer}/maps" in arrays]


def expected_states(files: list[dict[str, np.ndarray]], layer: str, out_channels: int) -> list[list[int]]:
    """Per filter and snapshot, the state the monitor's verdicts in the files give."""
    states = np.full((out_channels, len(files)), ALIVE)
    for column, arrays in enumerate(files):
        states[arrays[f"{layer}/dormant"], column] = DORMANT
        states[arrays[f"{layer}/dead"], column] = DEAD
    return states.tolist()


# While a list, the real paths of the files and directories opened or listed.
_opened: Optional[list[str]] = None


def _record_reads(event: str, args: tuple[Any, ...]) -> None:
    if _opened is not None and event in ("open", "os.listdir", "os.scandir") and args:
        path = args[0]
        if isinstance(path, (str, bytes, os.PathLike)):
            _opened.append(os.path.realpath(os.fsdecode(path)))


sys.addaudithook(_record_reads)


# ---------------------------------------------------------------- the runs served


@dataclass
class TrainedLogs:
    logdir: Path
    run_dir: Path
    outside_run_dir: Path
    dead_filters: dict[str, list[int]]
    images: dict[str, dict[int, np.ndarray]]


def _conv_relu_net() -> nn.Sequential:
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    with torch.no_grad():
        net[0].bias[DEAD_FILTER] = -1000.0
    return net


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedLogs:
    """A fit with FilterMonitor (4 snapshots, feature maps at 3, dataset examples at 3
    validations), a run with event files and no history beside it, and a copy of the
    trained run outside the log directory."""
    logdir = tmp_path_factory.mktemp("logs")
    torch.manual_seed(0)
    monitor = FilterMonitor(views_every=2)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(logdir, max_epochs=3))
    trainer.fit(Classifier(_conv_relu_net()), datamodule=RandomImages())
    run_dir = Path(trainer.logger.log_dir)
    assert run_dir == logdir / TRAINED_RUN

    with SummaryWriter(str(logdir / "no_history")) as writer:
        writer.add_scalar("loss", 1.0, 0)

    outside_run_dir = tmp_path_factory.mktemp("outside") / TRAINED_RUN
    shutil.copytree(run_dir, outside_run_dir)
    return TrainedLogs(logdir, run_dir, outside_run_dir, monitor.dead_filters, read_events(run_dir).images)


@pytest.fixture(scope="module")
def board(trained: TrainedLogs) -> Board:
    return Board(trained.logdir)


class HandRun:
    """A run snapshotted by hand with FilterVisualizer into a SummaryWriter: a conv whose
    filter 1 is dead, its weights moved between snapshots."""

    def __init__(self, logdir: Path) -> None:
        self.dir = logdir / HAND_RUN
        self.writer = SummaryWriter(str(self.dir))
        self.visualizer = FilterVisualizer(self.writer, history_dir=history_dir_of(self.dir), views_every=2)
        self.model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        with torch.no_grad():
            self.model[0].bias[1] = -100.0
        self.probe = torch.rand(2, 3, 8, 8)

    def snapshots(self, *steps: int) -> None:
        for step in steps:
            self.visualizer.snapshot(self.model, self.probe, step)
            with torch.no_grad():
                self.model[0].weight.add_(0.05 * torch.randn_like(self.model[0].weight))
        self.visualizer.flush()
        self.writer.flush()

    def file(self, step: int) -> Path:
        return history_dir_of(self.dir) / f"step_{step:08d}.npz"

    def close(self) -> None:
        self.visualizer.close()
        self.writer.close()


@pytest.fixture
def hand_run(tmp_path: Path) -> Iterator[HandRun]:
    run = HandRun(tmp_path)
    yield run
    run.close()


# ---------------------------------------------------------------- runs


def test_runs_lists_the_runs_with_history(board, trained):
    files = history_of(trained.run_dir)
    assert board.json("runs") == {
        "runs": [
            {
                "run": TRAINED_RUN,
                "layers": ["net.0", "net.2"],
                "snapshots": len(files),
                "last_step": int(files[-1]["step"]),
            }
        ]
    }
    assert len(files) == 4


def test_the_tab_is_active_only_with_history(board, tmp_path):
    assert board.plugin.is_active()
    with SummaryWriter(str(tmp_path / "no_history")) as writer:
        writer.add_scalar("loss", 1.0, 0)
    assert not Board(tmp_path).plugin.is_active()
    assert Board(tmp_path).json("runs") == {"runs": []}
    assert board.plugin.frontend_metadata().tab_name == "Filters"
    assert board.plugin.frontend_metadata().es_module_path == "/index.js"


def test_the_page_is_served(board):
    response = board.get("index.js")
    assert response.status_code == 200
    assert "javascript" in response.mimetype
    page = response.get_data(as_text=True)
    assert "export" in page and "render" in page


# ---------------------------------------------------------------- layer


@pytest.mark.parametrize("layer, out_channels", [("net.0", 6), ("net.2", 8)])
def test_layer_has_a_row_per_filter_and_a_column_per_history_file(board, trained, layer, out_channels):
    files = history_of(trained.run_dir)
    answer = board.json("layer", run=TRAINED_RUN, layer=layer)
    steps = [int(arrays["step"]) for arrays in files]
    assert answer["run"] == TRAINED_RUN and answer["layer"] == layer
    assert answer["out_channels"] == out_channels and answer["drawn"] == out_channels
    assert answer["steps"] == steps == sorted(steps)
    for key in SERIES:
        assert np.asarray(answer[key]).shape == (out_channels, len(steps)), key

    for key, stored in (
        ("mean_activation", "channel_mean_abs"),
        ("drift", "drift"),
        ("norm_ratio", "weight_norm_ratio"),
    ):
        expected = np.stack([arrays[f"{layer}/{stored}"] for arrays in files], axis=1)
        np.testing.assert_allclose(np.asarray(answer[key], dtype=float), expected, rtol=1e-5, atol=1e-12, err_msg=key)
    assert answer["drift"] and all(abs(row[0]) < 1e-6 for row in answer["drift"])  # 1 - cosine of a filter to itself
    assert answer["maps_steps"] == [int(arrays["step"]) for arrays in files if f"{layer}/maps" in arrays]
    assert 0 < len(answer["maps_steps"]) < len(steps)


def test_layer_states_follow_the_monitors_verdicts(board, trained):
    files = history_of(trained.run_dir)
    answer = board.json("layer", run=TRAINED_RUN, layer="net.0")
    assert answer["state"] == expected_states(files, "net.0", 6)

    judged_dead = [DEAD_FILTER in arrays["net.0/dead"] for arrays in files]
    assert judged_dead[0] is False and all(judged_dead[1:])  # dead from the second snapshot (patience 2)
    assert answer["state"][DEAD_FILTER] == [DORMANT, DEAD, DEAD, DEAD]
    assert trained.dead_filters["net.0"] == [DEAD_FILTER]
    for layer, dead in trained.dead_filters.items():
        last = [row[-1] for row in board.json("layer", run=TRAINED_RUN, layer=layer)["state"]]
        assert [index for index, state in enumerate(last) if state == DEAD] == dead, layer
    alive = [state for row, states in enumerate(answer["state"]) if row != DEAD_FILTER for state in states]
    assert set(alive) == {ALIVE}


def test_dormant_score_is_the_mean_activation_over_its_snapshots_layer_mean(board):
    answer = board.json("layer", run=TRAINED_RUN, layer="net.0")
    activation = np.asarray(answer["mean_activation"], dtype=float)
    score = np.asarray(answer["dormant_score"], dtype=float)
    np.testing.assert_allclose(score, activation / activation.mean(axis=0, keepdims=True), rtol=1e-4)
    assert (score[DEAD_FILTER] == 0).all() and (score[DEAD_FILTER - 1] > 0).all()


@pytest.mark.parametrize("layer", ["net.0", "net.2"])
def test_layer_has_the_health_signals_of_each_snapshot(board, trained, layer):
    answer = board.json("layer", run=TRAINED_RUN, layer=layer)
    files = history_of(trained.run_dir)
    for key in ("effective_rank", "srank", "cka_to_first"):
        expected = [float(arrays[f"{layer}/{key}"]) for arrays in files]
        np.testing.assert_allclose(answer["health"][key], expected, rtol=1e-5, err_msg=key)
    assert answer["health"]["cka_to_first"][0] == 1.0


def test_layer_lists_the_validations_with_dataset_examples(board, trained):
    examples = examples_of(trained.run_dir)
    assert len(examples) == 3
    answer = board.json("layer", run=TRAINED_RUN, layer="net.0")
    assert answer["examples_steps"] == [int(arrays["step"]) for arrays in examples]
    assert board.json("layer", run=TRAINED_RUN, layer="net.2")["examples_steps"] == []


# ---------------------------------------------------------------- filter


@pytest.mark.parametrize("layer", ["net.0", "net.2"])
def test_filter_is_its_row_of_the_layer(board, trained, layer):
    answer = board.json("layer", run=TRAINED_RUN, layer=layer)
    files = history_of(trained.run_dir)
    maps_steps = [int(arrays["step"]) for arrays in files if f"{layer}/maps" in arrays]
    examples_steps = [int(arrays["step"]) for arrays in examples_of(trained.run_dir) if f"{layer}/patches" in arrays]
    for channel in range(answer["out_channels"]):
        filter_answer = board.json("filter", run=TRAINED_RUN, layer=layer, filter=str(channel))
        assert (filter_answer["run"], filter_answer["layer"], filter_answer["filter"]) == (TRAINED_RUN, layer, channel)
        assert filter_answer["steps"] == answer["steps"]
        for key in SERIES:
            assert filter_answer[key] == answer[key][channel], (key, channel)
        assert filter_answer["weights"]["steps"] == answer["steps"]
        assert filter_answer["maps"]["steps"] == maps_steps == answer["maps_steps"]
        if examples_steps:
            assert filter_answer["examples"]["steps"] == examples_steps
        else:
            assert filter_answer["examples"] is None


def test_filter_urls_answer_its_sprites(board):
    answer = board.json("filter", run=TRAINED_RUN, layer="net.0", filter="3")
    for kind in ("weights", "maps", "examples"):
        route, query = answer[kind]["url"].split("?")
        response = Client(board.apps[f"/{route}"]).get(f"/{route}", query_string=query)
        assert response.status_code == 200 and response.mimetype == "image/png", kind


# ---------------------------------------------------------------- pictures


@pytest.mark.parametrize("layer", ["net.0", "net.2"])
def test_each_weights_frame_has_the_pixels_of_the_filter_in_the_tensorboard_image_of_its_step(board, trained, layer):
    images = trained.images[f"filterviz/weights/{layer}"]
    for channel in (0, DEAD_FILTER, 5):
        answer = board.json("filter", run=TRAINED_RUN, layer=layer, filter=str(channel))["weights"]
        sprite = board.png("weights.png", run=TRAINED_RUN, layer=layer, filter=str(channel))
        shown = frames(sprite, answer["tile"], answer["columns"], len(answer["steps"]))
        assert len(shown) == 4
        for step, frame in zip(answer["steps"], shown):
            np.testing.assert_array_equal(
                frame, tile_of(images[step], channel, answer["tile"]), err_msg=f"{channel} {step}"
            )
        assert not np.array_equal(shown[0], shown[-1]) or channel == DEAD_FILTER  # trained between them


def test_the_maps_sprite_has_a_frame_per_snapshot_with_maps(board):
    answer = board.json("filter", run=TRAINED_RUN, layer="net.0", filter="2")["maps"]
    sprite = board.png("maps.png", run=TRAINED_RUN, layer="net.0", filter="2")
    shown = frames(sprite, answer["tile"], answer["columns"], len(answer["steps"]))
    assert len(shown) == 3 and all(frame.std() > 0 for frame in shown)
    dead = frames(
        board.png("maps.png", run=TRAINED_RUN, layer="net.0", filter=str(DEAD_FILTER)),
        answer["tile"],
        answer["columns"],
        3,
    )
    assert all(len(np.unique(frame.reshape(-1, 3), axis=0)) == 1 for frame in dead)  # a ReLU that is all zeros


def test_the_examples_sprite_has_a_row_per_validation_of_the_filters_examples(board, trained):
    examples = examples_of(trained.run_dir)
    for channel in (0, DEAD_FILTER):
        answer = board.json("filter", run=TRAINED_RUN, layer="net.0", filter=str(channel))["examples"]
        sprite = board.png("examples.png", run=TRAINED_RUN, layer="net.0", filter=str(channel))
        k = answer["columns"]
        assert k == examples[0]["net.0/patches"].shape[1]
        shown = frames(sprite, answer["tile"], k, len(examples) * k)
        for run_index, arrays in enumerate(examples):
            for rank in range(k):
                frame = shown[run_index * k + rank]
                if np.isfinite(arrays["net.0/values"][channel, rank]):
                    np.testing.assert_array_equal(frame, arrays["net.0/patches"][channel, rank])
                else:
                    assert (frame == 255).all()


def test_a_layer_without_dataset_examples_has_no_examples_sprite(board):
    assert "examples" in board.error("examples.png", 404, run=TRAINED_RUN, layer="net.2", filter="0")


# ---------------------------------------------------------------- bad requests


@pytest.mark.parametrize("route", ["layer", "filter", "weights.png", "maps.png", "examples.png", "featvis.png"])
def test_a_missing_argument_is_a_bad_request(board, route):
    board.error(route, 400, layer="net.0", filter="0")
    board.error(route, 400, run=TRAINED_RUN, filter="0")
    if route != "layer":
        board.error(route, 400, run=TRAINED_RUN, layer="net.0")
        board.error(route, 400, run=TRAINED_RUN, layer="net.0", filter="")


@pytest.mark.parametrize("route", ["layer", "filter", "weights.png", "maps.png", "examples.png", "featvis.png"])
def test_unknown_runs_and_layers_are_not_found(board, route):
    board.error(route, 404, run="tb/version_9", layer="net.0", filter="0")
    board.error(route, 404, run="no_history", layer="net.0", filter="0")
    board.error(route, 404, run=TRAINED_RUN, layer="net.9", filter="0")
    board.error(route, 404, run=TRAINED_RUN, layer="net.1", filter="0")  # the ReLU, not a conv


@pytest.mark.parametrize("route", ["filter", "weights.png", "maps.png", "examples.png", "featvis.png"])
@pytest.mark.parametrize("channel", ["6", "100", "-1", "x", "1.5", " 1"])
def test_a_filter_out_of_range_or_not_a_number_is_a_bad_request(board, route, channel):
    board.error(route, 400, run=TRAINED_RUN, layer="net.0", filter=channel)


@pytest.mark.parametrize("route", ["layer", "filter", "weights.png", "maps.png", "examples.png", "featvis.png"])
def test_a_run_outside_the_log_directory_is_not_found_and_not_read(board, trained, route):
    global _opened
    outside = trained.outside_run_dir
    relative = os.path.relpath(outside, trained.logdir)
    assert relative.startswith("..") and (outside / "filterviz" / "history").is_dir()
    for run in (relative, str(outside), f"{TRAINED_RUN}/../../../{relative}", f"{TRAINED_RUN}/.."):
        _opened = []
        try:
            board.error(route, 404, run=run, layer="net.0", filter="0")
            reads = _opened
        finally:
            _opened = None
        outside_root = os.path.realpath(outside.parents[1])
        assert [path for path in reads if path.startswith(outside_root)] == [], run


# ---------------------------------------------------------------- history files changing


def test_a_history_file_removed_between_requests_is_left_out(hand_run, tmp_path):
    hand_run.snapshots(0, 10, 20)
    board = Board(tmp_path)
    before = board.json("layer", run=HAND_RUN, layer=HAND_LAYER)
    assert before["steps"] == [0, 10, 20] and before["maps_steps"] == maps_steps_of(hand_run.dir, HAND_LAYER)
    assert 0 in before["maps_steps"]
    board.png("weights.png", run=HAND_RUN, layer=HAND_LAYER, filter="0")

    hand_run.file(0).unlink()
    after = board.json("layer", run=HAND_RUN, layer=HAND_LAYER)
    assert after["steps"] == [10, 20] and after["maps_steps"] == maps_steps_of(hand_run.dir, HAND_LAYER)
    assert [row[1:] for row in before["state"]] == after["state"]
    answer = board.json("filter", run=HAND_RUN, layer=HAND_LAYER, filter="0")
    assert answer["weights"]["steps"] == [10, 20] and answer["maps"]["steps"] == after["maps_steps"]
    sprite = board.png("weights.png", run=HAND_RUN, layer=HAND_LAYER, filter="0")
    assert len(frames(sprite, answer["weights"]["tile"], answer["weights"]["columns"], 2)) == 2
    assert board.json("runs")["runs"] == [{"run": HAND_RUN, "layers": [HAND_LAYER], "snapshots": 2, "last_step": 20}]


def replace_file(path: Path, content: bytes) -> None:
    """Put ``content`` at ``path`` whole, as a file moved into place."""
    staged = path.with_name(f".{path.name}.part")
    staged.write_bytes(content)
    os.replace(staged, path)


def steps_served(board: Board, expected: list[int], seconds: float = 0.0) -> list[int]:
    """The steps ``layer`` answers for the hand run, asked again for up to ``seconds`` until
    they are ``expected``."""
    deadline = time.monotonic() + seconds
    while True:
        steps = board.json("layer", run=HAND_RUN, layer=HAND_LAYER)["steps"]
        if steps == expected or time.monotonic() > deadline:
            return steps
        time.sleep(0.1)


def test_a_damaged_or_half_written_file_is_skipped_until_it_is_whole(hand_run, tmp_path):
    hand_run.snapshots(0, 10, 20)
    board = Board(tmp_path)
    assert steps_served(board, [0, 10, 20]) == [0, 10, 20]

    replace_file(hand_run.file(15), b"\x00not a history file" * 50)
    whole = hand_run.file(20).read_bytes()
    replace_file(hand_run.file(20), whole[: len(whole) // 2])
    assert steps_served(board, [0, 10]) == [0, 10]
    assert board.json("filter", run=HAND_RUN, layer=HAND_LAYER, filter="1")["weights"]["steps"] == [0, 10]
    sprite = board.png("weights.png", run=HAND_RUN, layer=HAND_LAYER, filter="1")
    assert sprite.shape[1] == 2 * sprite.shape[0]
    assert board.json("runs")["runs"] == [{"run": HAND_RUN, "layers": [HAND_LAYER], "snapshots": 2, "last_step": 10}]

    replace_file(hand_run.file(20), whole)
    answer = board.json("layer", run=HAND_RUN, layer=HAND_LAYER)
    hand_run.file(15).unlink()  # the damaged file stays out of what the test reads itself
    assert answer["steps"] == [0, 10, 20] and answer["maps_steps"] == maps_steps_of(hand_run.dir, HAND_LAYER)
    assert board.json("filter", run=HAND_RUN, layer=HAND_LAYER, filter="1")["weights"]["steps"] == [0, 10, 20]
    assert board.json("runs")["runs"] == [{"run": HAND_RUN, "layers": [HAND_LAYER], "snapshots": 3, "last_step": 20}]


def test_a_damaged_compressed_file_is_skipped(hand_run, tmp_path):
    hand_run.snapshots(0, 10)
    arrays = load_history(hand_run.file(10))
    arrays["step"] = np.array(15, dtype=np.int64)
    np.savez_compressed(hand_run.file(15), **arrays)
    board = Board(tmp_path)
    assert steps_served(board, [0, 10, 15]) == [0, 10, 15]

    damaged = bytearray(hand_run.file(15).read_bytes())
    damaged[len(damaged) // 3 : len(damaged) // 3 + 40] = b"\xff" * 40
    replace_file(hand_run.file(15), bytes(damaged))
    assert steps_served(board, [0, 10]) == [0, 10]
    assert board.json("filter", run=HAND_RUN, layer=HAND_LAYER, filter="0")["weights"]["steps"] == [0, 10]


def test_a_file_completed_in_place_is_served_once_whole(hand_run, tmp_path):
    hand_run.snapshots(0, 10, 20)
    whole = hand_run.file(20).read_bytes()
    hand_run.file(20).write_bytes(whole[: len(whole) - 100])
    board = Board(tmp_path)
    assert steps_served(board, [0, 10]) == [0, 10]
    with open(hand_run.file(20), "ab") as handle:
        handle.write(whole[len(whole) - 100 :])
    assert steps_served(board, [0, 10, 20], seconds=10.0) == [0, 10, 20]


def test_a_growing_history_is_served_as_it_grows(hand_run, tmp_path):
    hand_run.snapshots(0, 10)
    board = Board(tmp_path)
    first = board.json("layer", run=HAND_RUN, layer=HAND_LAYER)
    assert first["steps"] == [0, 10]
    sprite = board.json("filter", run=HAND_RUN, layer=HAND_LAYER, filter="0")["weights"]
    frames(board.png("weights.png", run=HAND_RUN, layer=HAND_LAYER, filter="0"), sprite["tile"], sprite["columns"], 2)

    hand_run.snapshots(20, 30)
    later = board.json("layer", run=HAND_RUN, layer=HAND_LAYER)
    assert later["steps"] == [0, 10, 20, 30]
    assert [row[:2] for row in later["state"]] == first["state"]
    assert later["state"][1] == [DORMANT, DEAD, DEAD, DEAD]
    assert [index for index, row in enumerate(later["state"]) if row[-1] == DEAD] == hand_run.visualizer.dead_filters[
        HAND_LAYER
    ]
    assert all(value > 0 for row in later["drift"] for value in row[1:])
    sprite = board.json("filter", run=HAND_RUN, layer=HAND_LAYER, filter="0")["weights"]
    assert sprite["steps"] == [0, 10, 20, 30]
    shown = frames(
        board.png("weights.png", run=HAND_RUN, layer=HAND_LAYER, filter="0"), sprite["tile"], sprite["columns"], 4
    )
    assert not np.array_equal(shown[1], shown[3])
    assert board.json("runs")["runs"][0]["last_step"] == 30


# ---------------------------------------------------------------- inside TensorBoard


def test_the_plugin_serves_pictures_without_importing_torch(trained):
    script = (
        "import sys\n"
        "from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider\n"
        "from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer\n"
        "from tensorboard.plugins import base_plugin\n"
        "from werkzeug.test import Client\n"
        "from lightning_filterviz.board import FilterVizLoader\n"
        "import lightning_filterviz.board.plugin\n"
        "assert 'torch' not in sys.modules, 'imported'\n"
        "logdir = sys.argv[1]\n"
        "multiplexer = EventMultiplexer()\n"
        "multiplexer.AddRunsFromDirectory(logdir)\n"
        "multiplexer.Reload()\n"
        "context = base_plugin.TBContext(logdir=logdir, data_provider=MultiplexerDataProvider(multiplexer, logdir))\n"
        "apps = FilterVizLoader().load(context).get_plugin_apps()\n"
        "for route in ('/layer', '/filter', '/weights.png', '/maps.png', '/examples.png'):\n"
        "    response = Client(apps[route]).get(route, query_string={'run': sys.argv[2], 'layer': 'net.0', 'filter': '2'})\n"
        "    assert response.status_code == 200, route\n"
        "assert 'torch' not in sys.modules, 'served'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(trained.logdir), TRAINED_RUN], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_the_entry_point_names_the_loader():
    (entry,) = [entry for entry in metadata.entry_points(group="tensorboard_plugins") if entry.name == "filterviz"]
    assert entry.load() is FilterVizLoader


def test_the_loader_builds_the_plugin(trained):
    multiplexer = EventMultiplexer()
    context = base_plugin.TBContext(
        logdir=str(trained.logdir), data_provider=MultiplexerDataProvider(multiplexer, str(trained.logdir))
    )
    assert isinstance(FilterVizLoader().load(context), FilterVizPlugin)


def test_a_plugin_that_cannot_be_built_stays_out_with_one_log_line(caplog):
    with caplog.at_level(logging.DEBUG):
        assert FilterVizLoader().load(types.SimpleNamespace()) is None
    records = [record for record in caplog.records if record.name.startswith("lightning_filterviz")]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert "Filters tab" in records[0].getMessage() and "\n" not in records[0].getMessage()
