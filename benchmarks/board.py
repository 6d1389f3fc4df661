"""What the Filters tab costs: its answers on a long run's history, and TensorBoard's start.

    python benchmarks/board.py            # about two minutes on 2 CPU cores
    python benchmarks/board.py --quick    # fewer trials

Builds a history of 1000 snapshots x 20 convs x 64 filters: the first snapshot taken by the
engine itself (FilterVisualizer on a 20-conv model), every other one its arrays with the
statistics changed, feature maps kept at the snapshots the engine keeps them at
(views_every=10: the 1st, 2nd, 4th, 8th ... and every 10th), and 50 validation runs' dataset
examples of the first conv. Then prints, side by side:

  a. the layer map (``layer``): the first answer of a fresh TensorBoard (every snapshot file
     opened for that layer), the next answer (the same history), and an answer after one
     more snapshot was written (one file read);
  b. a filter's page: ``filter`` and its three sprites (``weights.png``, ``maps.png``,
     ``examples.png``), first and again;
  c. TensorBoard's start, to its first answer of the plugin listing, on a log directory
     without monitor history, with the package's plugin and with TensorBoard's dynamic
     plugins left out (the same launcher otherwise; trials alternate).

Goals (issue: the Filters tab): a under 1 s, b under 0.5 s, c under 0.2 s more.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np

SNAPSHOTS, LAYERS, FILTERS = 1000, 20, 64
VIEWS_EVERY = 10
VALIDATION_RUNS, EXAMPLES_K = 50, 9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer trials of TensorBoard's start")
    args = parser.parse_args()
    import tensorboard
    import torch

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, tensorboard {tensorboard.__version__}")
    workdir = Path(tempfile.mkdtemp(prefix="filterviz-board-bench-"))
    started = time.perf_counter()
    run_dir = build_history(workdir / "logs" / "run")
    print(f"history of {SNAPSHOTS} snapshots x {LAYERS} convs x {FILTERS} filters built in "
          f"{time.perf_counter() - started:.0f} s")
    answers(workdir / "logs", run_dir)
    tensorboard_start(workdir, trials=3 if args.quick else 7)


def build_history(run_dir: Path) -> Path:
    """The run's event file and history: the first snapshot from the engine, the rest derived."""
    import torch
    from torch import nn
    from torch.utils.tensorboard import SummaryWriter

    from lightning_filterviz import FilterVisualizer, load_history
    from lightning_filterviz.core.history import HistoryFile, history_dir_of, write_history_file

    torch.manual_seed(0)
    convs = [nn.Conv2d(3 if index == 0 else FILTERS, FILTERS, 3, padding=1) for index in range(LAYERS)]
    model = nn.Sequential(*[part for conv in convs for part in (conv, nn.ReLU())])
    history = history_dir_of(run_dir)
    writer = SummaryWriter(str(run_dir))
    visualizer = FilterVisualizer(writer, history_dir=str(history), views_every=VIEWS_EVERY)
    visualizer.snapshot(model, torch.rand(2, 3, 16, 16), 0)
    visualizer.close()
    writer.close()
    first = load_history(history / "step_00000000.npz")
    generator = np.random.default_rng(0)
    for index in range(1, SNAPSHOTS):
        arrays = dict(first)
        arrays["step"] = np.array(index * 10, dtype=np.int64)
        for name in first["layers"]:
            arrays[f"{name}/drift"] = generator.random(FILTERS, dtype=np.float32) * min(1.0, index / 300)
            arrays[f"{name}/channel_mean_abs"] = generator.random(FILTERS, dtype=np.float32)
            arrays[f"{name}/filters"] = first[f"{name}/filters"] + generator.normal(
                0, 0.01, first[f"{name}/filters"].shape
            ).astype(np.float32)
            if not _keeps_maps(index + 1):
                arrays.pop(f"{name}/maps", None)
        write_history_file(history, HistoryFile(f"step_{index * 10:08d}.npz", arrays))
    first_layer = str(first["layers"][0])
    patches = generator.integers(0, 256, (FILTERS, EXAMPLES_K, 32, 32, 3), dtype=np.uint8)
    for run in range(VALIDATION_RUNS):
        step = (run + 1) * SNAPSHOTS * 10 // VALIDATION_RUNS
        arrays = {
            "format": first["format"],
            "step": np.array(step, dtype=np.int64),
            "layers": np.array([first_layer]),
            f"{first_layer}/values": generator.random((FILTERS, EXAMPLES_K), dtype=np.float32),
            f"{first_layer}/indices": np.arange(FILTERS * EXAMPLES_K).reshape(FILTERS, EXAMPLES_K),
            f"{first_layer}/positions": np.zeros((FILTERS, EXAMPLES_K, 2), dtype=np.int64),
            f"{first_layer}/patches": patches,
        }
        write_history_file(history, HistoryFile(f"validation_examples_{step:08d}.npz", arrays))
    return run_dir


def _keeps_maps(count: int) -> bool:
    return count & (count - 1) == 0 or count % VIEWS_EVERY == 0


def answers(logdir: Path, run_dir: Path) -> None:
    from lightning_filterviz.core.history import HistoryFile, history_dir_of, load_history, write_history_file

    plugin = fresh_plugin(logdir)
    run = run_dir.name
    history = history_dir_of(run_dir)
    deep, first = "18", "0"  # the 19th conv: only the layer map; the first: the filter's page with examples
    print("\na. the layer map (filters x snapshots), seconds")
    print(f"   first answer (every file read):  {timed(lambda: get(plugin, 'layer', run=run, layer=deep)):.3f}")
    print(f"   again (nothing new):             {timed(lambda: get(plugin, 'layer', run=run, layer=deep)):.3f}")
    last = load_history(history / f"step_{(SNAPSHOTS - 1) * 10:08d}.npz")
    last["step"] = np.array(SNAPSHOTS * 10, dtype=np.int64)
    write_history_file(history, HistoryFile(f"step_{SNAPSHOTS * 10:08d}.npz", last))
    print(f"   after one more snapshot:         {timed(lambda: get(plugin, 'layer', run=run, layer=deep)):.3f}")

    def page() -> None:
        for route in ("filter", "weights.png", "maps.png", "examples.png"):
            get(plugin, route, run=run, layer=first, filter="5")

    print("\nb. a filter's page (filter + weights, maps, examples sprites), seconds")
    get(plugin, "layer", run=run, layer=first)  # the page opens from the layer map
    print(f"   first:  {timed(page):.3f}")
    print(f"   again:  {timed(page):.3f}")


def fresh_plugin(logdir: Path):  # noqa: ANN201  (TensorBoard's plugin type)
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin

    from lightning_filterviz.board.plugin import FilterVizPlugin

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    return FilterVizPlugin(base_plugin.TBContext(logdir=str(logdir), data_provider=provider))


def get(plugin, route: str, **arguments: str) -> bytes:  # noqa: ANN001
    from werkzeug.test import Client

    response = Client(plugin.get_plugin_apps()[f"/{route}"]).get("/", query_string=arguments)
    if response.status_code != 200:
        raise RuntimeError(f"{route} {arguments}: {response.status_code} {response.get_data(as_text=True)}")
    return response.get_data()


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


# TensorBoard's main, with its dynamic plugins (ours among them) left out when asked to.
LAUNCHER = """
import sys
from tensorboard import default, main
if sys.argv.pop(1) == "without":
    default.get_dynamic_plugins = lambda: []
main.run_main()
"""


def tensorboard_start(workdir: Path, trials: int) -> None:
    empty = workdir / "no_history"
    empty.mkdir()
    print(f"\nc. TensorBoard's start to its first plugin listing, no monitor history, median of {trials}, seconds")
    times: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(trials):
        for plugins in ("without", "with"):
            times[plugins].append(start_to_listing(empty, plugins))
    with_plugin, without = statistics.median(times["with"]), statistics.median(times["without"])
    print(f"   with the Filters tab:     {with_plugin:.2f}")
    print(f"   without dynamic plugins:  {without:.2f}")
    print(f"   difference:               {with_plugin - without:+.2f}")


def start_to_listing(logdir: Path, plugins: str) -> float:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, plugins, "--logdir", str(logdir), "--port", str(port),
         "--host", "127.0.0.1", "--load_fast", "false"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugins_listing", timeout=5) as answer:
                    answer.read()
                return time.perf_counter() - started
            except OSError:
                if server.poll() is not None or time.perf_counter() - started > 120:
                    raise RuntimeError("TensorBoard did not start") from None
                time.sleep(0.02)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
