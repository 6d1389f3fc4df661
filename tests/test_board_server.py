"""The Filters tab inside a real TensorBoard process, with both of its data loaders and under
a path prefix: TensorBoard finds the plugin through its entry point, lists the tab as
"Filters" (enabled over a log directory with monitor history, disabled without), serves its
entry page, its page script and its routes."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from lightning_filterviz import FilterVisualizer
from lightning_filterviz.core.history import history_dir_of

RUN = "engine_run"
NO_HISTORY_RUN = "scalars_only"
STARTUP_SECONDS = 60.0


@pytest.fixture(scope="module")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of three snapshots written by the engine."""
    root = tmp_path_factory.mktemp("with_history")
    run_dir = root / RUN
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    probe = torch.rand(2, 3, 8, 8)
    with SummaryWriter(str(run_dir)) as writer:
        visualizer = FilterVisualizer(writer, history_dir=history_dir_of(run_dir), views_every=2)
        for step in (0, 10, 20):
            visualizer.snapshot(model, probe, step)
        visualizer.close()
    return root


@pytest.fixture(scope="module")
def logdir_without_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("without_history")
    with SummaryWriter(str(root / NO_HISTORY_RUN)) as writer:
        for step in range(3):
            writer.add_scalar("loss", 1.0 / (step + 1), step)
    return root


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TensorBoard:
    """A TensorBoard process and its base URL."""

    def __init__(self, logdir: Path, load_fast: str, path_prefix: str, output: Path) -> None:
        port = free_port()
        command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port)]
        command += ["--host", "127.0.0.1", "--load_fast", load_fast]
        if path_prefix:
            command += ["--path_prefix", path_prefix]
        self.output = output
        self.base = f"http://127.0.0.1:{port}{path_prefix}"
        with open(output, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def get(self, path: str) -> tuple[int, str, bytes]:
        """``(status, content type, body)`` of ``GET <base>/<path>``."""
        try:
            with urllib.request.urlopen(f"{self.base}/{path}", timeout=10) as response:
                return response.status, response.headers.get("Content-Type", ""), response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers.get("Content-Type", ""), error.read()

    def json(self, path: str) -> Any:
        status, _, body = self.get(path)
        assert status == 200, (path, status, body[:500])
        return json.loads(body)

    def wait_for(self, path: str, answered: Callable[[Any], bool], seconds: float = STARTUP_SECONDS) -> Any:
        """The JSON of ``path`` once ``answered`` holds for it (polled while TensorBoard starts
        and loads the log directory)."""
        deadline = time.monotonic() + seconds
        last: Optional[Any] = None
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"TensorBoard exited: {self.log()}"
            with contextlib.suppress(OSError, ValueError):
                last = self.json(path)
                if answered(last):
                    return last
            time.sleep(0.25)
        raise AssertionError(f"{path} did not come as expected in {seconds} s; last: {last}; log: {self.log()}")

    def log(self) -> str:
        return self.output.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)


@pytest.fixture
def tensorboard(tmp_path: Path) -> Iterator[Callable[..., TensorBoard]]:
    """Starts TensorBoard processes; each is stopped when the test ends, whatever its outcome."""
    started: list[TensorBoard] = []

    def start(logdir: Path, load_fast: str, path_prefix: str = "") -> TensorBoard:
        board = TensorBoard(logdir, load_fast, path_prefix, tmp_path / f"tensorboard_{len(started)}.log")
        started.append(board)
        return board

    yield start
    for board in started:
        board.stop()


def filterviz_listing(listing: Any) -> Optional[dict[str, Any]]:
    return listing.get("filterviz") if isinstance(listing, dict) else None


@pytest.mark.parametrize(
    "load_fast, path_prefix",
    [("true", ""), ("false", ""), ("false", "/tb")],
    ids=["load_fast", "python_loader", "python_loader_under_a_prefix"],
)
def test_tensorboard_shows_the_tab_and_serves_it(tensorboard, logdir, load_fast, path_prefix):
    board = tensorboard(logdir, load_fast, path_prefix)
    listing = board.wait_for("data/plugins_listing", lambda answer: (filterviz_listing(answer) or {}).get("enabled"))
    entry = filterviz_listing(listing)
    assert entry["enabled"] is True
    assert entry["tab_name"] == "Filters"
    assert entry["loading_mechanism"]["type"] == "IFRAME"
    assert entry["loading_mechanism"]["module_path"].endswith("/data/plugin/filterviz/index.js")

    status, content_type, page = board.get("data/plugin_entry.html?name=filterviz")
    assert status == 200 and content_type.startswith("text/html")
    assert b"./index.js" in page

    status, content_type, script = board.get("data/plugin/filterviz/index.js")
    assert status == 200
    assert "javascript" in content_type
    assert b"export" in script and b"render" in script

    runs = board.json("data/plugin/filterviz/runs")["runs"]
    assert runs == [{"run": RUN, "layers": ["0"], "snapshots": 3, "last_step": 20}]
    layer = board.json(f"data/plugin/filterviz/layer?run={RUN}&layer=0")
    assert layer["steps"] == [0, 10, 20] and layer["out_channels"] == 4
    status, content_type, sprite = board.get(f"data/plugin/filterviz/weights.png?run={RUN}&layer=0&filter=1")
    assert status == 200 and content_type == "image/png" and sprite.startswith(b"\x89PNG")
    status, content_type, _ = board.get("data/plugin/filterviz/layer?run=..%2F..&layer=0")
    assert status == 404 and content_type.startswith("application/json")


@pytest.mark.parametrize("load_fast", ["true", "false"], ids=["load_fast", "python_loader"])
def test_without_history_the_tab_is_listed_but_disabled(tensorboard, logdir_without_history, load_fast):
    board = tensorboard(logdir_without_history, load_fast)
    board.wait_for("data/runs", lambda runs: runs == [NO_HISTORY_RUN])
    entry = filterviz_listing(board.json("data/plugins_listing"))
    assert entry is not None and entry["tab_name"] == "Filters"
    assert entry["enabled"] is False
    assert board.json("data/plugin/filterviz/runs") == {"runs": []}
