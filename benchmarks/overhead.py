"""What FilterMonitor costs a training run, measured side by side in one process.

    python benchmarks/overhead.py            # everything (about half an hour on 2 CPU cores)
    python benchmarks/overhead.py --quick    # fewer trials, for a smoke check

Prints:
  a. training wall time with / without the monitor: defaults on the example (trained
     for its configured epochs), and every_n_steps=10 on the example and on ResNet-18
     at 64x64 (trials alternate);
     and the cost of track_training_batches=True per training step on the example;
  b. training-thread time per snapshot / the probe batch's plain eval forward;
  c. one matplotlib figure per layer drawn on the training thread / our snapshot;
  d. peak RSS after 200 snapshots minus after 10;
  e. bytes written to the log dir per snapshot.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch import Trainer, seed_everything  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))

from cnn_example import ImageClassifier, PhotoPatches  # noqa: E402

from lightning_filterviz import FilterMonitor, FilterVisualizer  # noqa: E402
from lightning_filterviz.probe import model_input  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer trials and shorter runs")
    parser.add_argument("--parts", default="abcde", help="which measurements to run, e.g. 'bd' (default: all)")
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        print(rss_growth(*example_model_and_probe(), snapshots=200))
        return
    # The machine's own noise is several percent per run: many short alternating pairs
    # and their median ratio measure a 1% difference better than a few long runs.
    quiet_logs()
    trials = 3 if args.quick else 9
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")

    if "a" in args.parts:
        print("\na. training wall time, with monitor / without (median of alternating pairs)")
        # The defaults line trains as long as the example does (configs/default.yaml): the
        # first snapshot's one-time work then weighs what it weighs in the example's run.
        configured_epochs = 1 if args.quick else example_epochs()
        label = f"example, default settings ({epochs_label(configured_epochs)})"
        report_ratio(label, example_run(configured_epochs, {}), trials)
        example_epochs_short = 1 if args.quick else 2
        report_ratio(
            f"example, every_n_steps=10 ({epochs_label(example_epochs_short)})",
            example_run(example_epochs_short, {"every_n_steps": 10}),
            trials,
        )
        # 100 steps, so that the first snapshot's one-time work (discovery, receptive fields,
        # the extra views) does not weigh several times what it does in a real run.
        report_ratio("resnet18 64x64, every_n_steps=10", resnet_run(30 if args.quick else 100), trials)
        print("   per-batch tracking (track_training_batches=True vs False, both every epoch):")
        report_ratio(
            "example, training-batch tracking",
            example_run(example_epochs_short, {"track_training_batches": True}, baseline={}),
            trials,
        )

    model, probe = example_model_and_probe()
    if "b" in args.parts:
        print("\nb. training-thread time per snapshot / plain eval forward of the probe")
        stall, forward = snapshot_stall(model, probe, repeats=10 if args.quick else 40)
        print(f"   snapshot {stall * 1e3:.2f} ms / forward {forward * 1e3:.2f} ms = {stall / forward:.2f}")

    if "c" in args.parts:
        print("\nc. one matplotlib figure per layer on the training thread / our synchronous snapshot")
        common, ours = matplotlib_versus_ours(model, probe, repeats=3 if args.quick else 5)
        print(f"   matplotlib {common * 1e3:.0f} ms / ours {ours * 1e3:.1f} ms = {common / ours:.1f}x")

    if "d" in args.parts:
        print("\nd. peak RSS growth over snapshots (in a fresh process: the peak is a high-water mark)")
        child = subprocess.run(
            [sys.executable, __file__, "--rss-child"], capture_output=True, text=True, check=True, cwd=REPO
        )
        growth = int(child.stdout.strip().splitlines()[-1])
        print(f"   peak RSS after 200 snapshots - after 10: {growth / 2**20:.1f} MB")

    if "e" in args.parts:
        print("\ne. bytes written per snapshot")
        events, arrays = bytes_per_snapshot(model, probe)
        print(
            f"   {(events + arrays) / 1024:.1f} KiB per snapshot (example model): "
            f"{events / 1024:.1f} KiB TensorBoard events, {arrays / 1024:.1f} KiB history arrays"
        )


def epochs_label(epochs: int) -> str:
    return f"{epochs} epoch" if epochs == 1 else f"{epochs} epochs"


def example_epochs() -> int:
    """The example's ``max_epochs``, as ``configs/default.yaml`` (README's main job) sets it."""
    import yaml

    config = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    return int(config["trainer"]["max_epochs"])


def quiet_logs() -> None:
    """Keep Lightning's start-up lines, the monitor's layer table and its warnings out of the figures."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning_utilities.core.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def report_ratio(label: str, run: Callable[[Optional[FilterMonitor]], float], trials: int) -> None:
    """Median of (A / B) over alternating pairs: A runs ``run.monitor_settings``, B runs
    ``run.baseline`` (no monitor when that is None)."""
    settings, baseline = run.monitor_settings, run.baseline  # type: ignore[attr-defined]
    run(None)  # warm-up: imports, allocator, data set
    ratios, with_times, without_times, clocks = [], [], [], []
    for trial in range(trials):
        # Alternate which goes first, so drift in machine speed cancels.
        order = (True, False) if trial % 2 == 0 else (False, True)
        times = {}
        for with_monitor in order:
            chosen = settings if with_monitor else baseline
            monitor = FilterMonitor(**chosen) if chosen is not None else None
            if with_monitor and baseline is None:
                clocks.append(MonitorClock(monitor))
            times[with_monitor] = run(monitor)
        ratios.append(times[True] / times[False])
        with_times.append(times[True])
        without_times.append(times[False])
    # The middle half of the pairs says how far the median can be trusted on a noisy machine.
    lower, _, upper = statistics.quantiles(ratios, n=4)
    print(
        f"   {label}: {statistics.median(ratios):.3f} (middle half {lower:.3f}..{upper:.3f}; "
        f"with {statistics.median(with_times):.2f} s, without {statistics.median(without_times):.2f} s, "
        f"ratios {', '.join(f'{ratio:.3f}' for ratio in ratios)})"
    )
    if clocks:
        # The monitor's own time moves far less with the machine's noise than the wall-time
        # ratio does; on two cores, the writer's contention with training comes on top.
        hooks = statistics.median(clock.hooks for clock in clocks)
        writer = statistics.median(clock.writer for clock in clocks)
        share = (hooks + writer) / statistics.median(without_times)
        print(
            f"     its own time per run: {hooks * 1e3:.0f} ms in its hooks on the training thread (wall) + "
            f"{writer * 1e3:.0f} ms rendering and writing (CPU) = {share:.1%} of the run without it"
        )


class MonitorClock:
    """Times one FilterMonitor: wall time inside its Lightning hooks (the training thread
    waits for those, probe forward included) and CPU time of its background jobs.

    At the end of ``fit`` the hooks wait for the last jobs, so that wait counts twice.
    """

    HOOKS = (
        "setup",
        "on_train_start",
        "on_train_batch_start",
        "on_before_backward",
        "on_train_batch_end",
        "on_train_epoch_end",
        "on_fit_end",
        "teardown",
    )
    JOBS = ("_render_and_write", "_write_ending")

    def __init__(self, monitor: FilterMonitor) -> None:
        self.hooks = 0.0
        self.writer = 0.0
        for name in self.HOOKS:
            setattr(monitor, name, self._timed(getattr(monitor, name), time.perf_counter, "hooks"))
        for name in self.JOBS:  # the background writer runs these; thread_time is that thread's CPU
            setattr(monitor.engine, name, self._timed(getattr(monitor.engine, name), time.thread_time, "writer"))

    def _timed(self, method: Callable, clock: Callable[[], float], total: str) -> Callable:
        def timed(*args, **kwargs):
            start = clock()
            try:
                return method(*args, **kwargs)
            finally:
                setattr(self, total, getattr(self, total) + clock() - start)

        return timed


def example_run(
    epochs: int, monitor_settings: dict, baseline: Optional[dict] = None
) -> Callable[[Optional[FilterMonitor]], float]:
    data = PhotoPatches()
    data.setup()

    def run(monitor: Optional[FilterMonitor]) -> float:
        seed_everything(0, verbose=False)
        return timed_fit(ImageClassifier(arch="small_cnn"), data, monitor, max_epochs=epochs)

    run.monitor_settings = monitor_settings  # type: ignore[attr-defined]
    run.baseline = baseline  # type: ignore[attr-defined]
    return run


def resnet_run(steps: int) -> Callable[[Optional[FilterMonitor]], float]:
    data = PhotoPatches(patch_size=64, train_patches=200, val_patches=20, batch_size=32)
    data.setup()

    def run(monitor: Optional[FilterMonitor]) -> float:
        seed_everything(0, verbose=False)
        return timed_fit(ImageClassifier(arch="resnet18", lr=1e-3), data, monitor, max_steps=steps)

    run.monitor_settings = {"every_n_steps": 10}  # type: ignore[attr-defined]
    run.baseline = None  # type: ignore[attr-defined]
    return run


def timed_fit(model: ImageClassifier, data: PhotoPatches, monitor: Optional[FilterMonitor], **limits) -> float:
    with tempfile.TemporaryDirectory() as log_dir:
        trainer = Trainer(
            accelerator="cpu",
            logger=TensorBoardLogger(log_dir, name="bench"),
            callbacks=[monitor] if monitor is not None else [],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            **limits,
        )
        start = time.perf_counter()
        trainer.fit(model, datamodule=data)
        return time.perf_counter() - start


def example_model_and_probe() -> tuple[torch.nn.Module, torch.Tensor]:
    data = PhotoPatches()
    data.setup()
    images = torch.stack([data.val_set[index][0] for index in range(8)])
    return ImageClassifier(arch="small_cnn"), images


def snapshot_stall(model: torch.nn.Module, probe: torch.Tensor, repeats: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as log_dir:
        writer = SummaryWriter(log_dir)
        visualizer = FilterVisualizer(writer, background=True)
        stalls, forwards = [], []
        for step in range(repeats):
            visualizer.flush()  # measure the stall itself, not waiting on a full queue
            start = time.perf_counter()
            visualizer.snapshot(model, probe, step)
            stalls.append(time.perf_counter() - start)
            visualizer.flush()
            forwards.append(plain_eval_forward(model, probe))
        visualizer.close()
        writer.close()
    return statistics.median(stalls), statistics.median(forwards)


def plain_eval_forward(model: torch.nn.Module, probe: torch.Tensor) -> float:
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        model(model_input(probe))
    elapsed = time.perf_counter() - start
    model.train()
    return elapsed


def matplotlib_versus_ours(model: torch.nn.Module, probe: torch.Tensor, repeats: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as log_dir:
        writer = SummaryWriter(log_dir)
        visualizer = FilterVisualizer(writer)
        common, ours = [], []
        for step in range(repeats):
            start = time.perf_counter()
            matplotlib_snapshot(model, writer, step)
            common.append(time.perf_counter() - start)
            start = time.perf_counter()
            visualizer.snapshot(model, probe, step)
            ours.append(time.perf_counter() - start)
        writer.close()
    return statistics.median(common), statistics.median(ours)


def matplotlib_snapshot(model: torch.nn.Module, writer: SummaryWriter, step: int) -> None:
    """What tutorials do: a figure with one subplot per filter, per conv layer, logged as PNG."""
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Conv2d):
            continue
        weight = module.weight.detach()[:64]
        columns = 8
        rows = (len(weight) + columns - 1) // columns
        figure, axes = plt.subplots(rows, columns, figsize=(columns, rows))
        for index, axis in enumerate(axes.flat):
            axis.axis("off")
            if index < len(weight):
                kernel = weight[index, 0]
                axis.imshow(((kernel - kernel.min()) / (kernel.max() - kernel.min() + 1e-12)).numpy(), cmap="gray")
        writer.add_figure(f"matplotlib/{name}", figure, step)  # renders, encodes and closes the figure


def rss_growth(model: torch.nn.Module, probe: torch.Tensor, snapshots: int) -> int:
    with tempfile.TemporaryDirectory() as log_dir:
        writer = SummaryWriter(log_dir)
        visualizer = FilterVisualizer(writer, background=True)
        after_ten = 0
        for step in range(snapshots):
            visualizer.snapshot(model, probe, step)
            if step == 9:
                visualizer.flush()
                after_ten = peak_rss()
        visualizer.close()
        writer.close()
    return peak_rss() - after_ten


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def bytes_per_snapshot(model: torch.nn.Module, probe: torch.Tensor, snapshots: int = 10) -> tuple[float, float]:
    """Bytes per snapshot in the event file and in the history files, as the callback writes them."""
    with tempfile.TemporaryDirectory() as log_dir:
        history = Path(log_dir) / "filterviz" / "history"
        writer = SummaryWriter(log_dir)
        visualizer = FilterVisualizer(writer, history_dir=history)
        for step in range(snapshots):
            visualizer.snapshot(model, probe, step)
        writer.close()
        events = sum(path.stat().st_size for path in Path(log_dir).glob("events.out.tfevents.*"))
        arrays = sum(path.stat().st_size for path in history.glob("*.npz"))
        return events / snapshots, arrays / snapshots


if __name__ == "__main__":
    main()
