"""What FilterMonitor costs a training run, measured side by side in one process.

    python benchmarks/overhead.py                  # everything on the CPU (about half an hour on 2 cores)
    python benchmarks/overhead.py --quick          # fewer trials, for a smoke check
    python benchmarks/overhead.py --device cuda    # the GPU measurements (a few minutes on one GPU)

Prints:
  a. training wall time with / without the monitor: defaults on the example (trained
     for its configured epochs), and every_n_steps=10 on the example and on ResNet-18
     at 64x64 (trials alternate);
     and the cost of track_training_batches=True per training step on the example;
  b. training-thread time per snapshot / the probe batch's plain eval forward, for the
     example and for ResNet-18 at 64x64 in channels_last, and the first snapshot's
     one-time work (finding each conv's activation, measuring receptive fields);
  c. one matplotlib figure per layer drawn on the training thread / our snapshot;
  d. peak RSS after 200 snapshots minus after 10;
  e. bytes written to the log dir per snapshot;
  f. what each logger costs the writer thread per snapshot (and the training thread, where
     its logger must be called there), on the example and on ResNet-18 at 64x64: TensorBoard,
     PNG files, W&B (offline), MLflow (SQLite), CSVLogger's metrics, and TensorBoard + W&B +
     MLflow at once; beside the PNG encoding that all of them share;
  i. the dataset examples: validation wall time in fit with the monitor collecting them / without
     the monitor, for examples of the first conv (the default) and of every conv, beside the
     monitor with examples off (examples_layers=[]); the writer thread's time drawing them per
     validation run; and training-step time with / without, to show the steps are unchanged.

With --device cuda (ResNet-18 in channels_last, precision "16-mixed", 128x128 inputs,
batches of 128 already on the GPU, probe 8):
  g. wall time with / without at every_n_steps=10 and 100, and track_training_batches on / off,
     from the start of step 1 to the end of the last step (the first snapshot's one-time work
     is part h's; the end-of-fit writing is the writer thread's);
  h. training-thread time per snapshot / the probe's eval forward, the first snapshot's
     one-time work, host synchronizations per snapshot and per tracked training forward (as
     torch's sync debug mode counts them), and whether snapshots return while GPU work queued
     before them still runs (which catches the waits that mode does not see).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
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
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch import Callback, Trainer, seed_everything  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "examples")]  # runs from a checkout, installed or not

from cnn_example import ImageClassifier, PhotoPatches  # noqa: E402

from lightning_filterviz import FilterMonitor, FilterVisualizer  # noqa: E402
from lightning_filterviz.core.png import EncodedImage  # noqa: E402
from lightning_filterviz.capture.probe import model_input  # noqa: E402
from lightning_filterviz.core.records import Table  # noqa: E402
from lightning_filterviz.publishing.sinks.group import SinkGroup  # noqa: E402
from lightning_filterviz.publishing.sinks.base import Sink  # noqa: E402
from lightning_filterviz.publishing.sinks.directory import DirectorySink  # noqa: E402
from lightning_filterviz.publishing.sinks.tensorboard import TensorBoardSink  # noqa: E402
from lightning_filterviz.core.tiles import Image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer trials and shorter runs")
    parser.add_argument("--parts", default="abcdefi", help="which measurements to run, e.g. 'bd' (default: all)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to measure (default: cpu)")
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # each figure shows as it comes
    if args.rss_child:
        print(rss_growth(*example_model_and_probe(), snapshots=200))
        return
    if args.device == "cuda":
        quiet_logs()
        cuda_report(quick=args.quick)
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
        repeats = 10 if args.quick else 40
        stall, forward, first = snapshot_stall(model, probe, repeats=repeats)
        print(f"   example: snapshot {stall * 1e3:.2f} ms / forward {forward * 1e3:.2f} ms = {stall / forward:.2f}")
        print(f"     first snapshot (one-time work included): {first * 1e3:.1f} ms")
        print_dispatched_ops(model, probe)
        resnet, resnet_probe = resnet18_channels_last(64, torch.device("cpu"))
        stall, forward, first = snapshot_stall(resnet, resnet_probe, repeats=repeats)
        print(
            f"   resnet18 64x64 channels_last, probe 8: snapshot {stall * 1e3:.2f} ms / "
            f"forward {forward * 1e3:.2f} ms = {stall / forward:.2f}"
        )
        print(f"     first snapshot (one-time work included): {first * 1e3:.1f} ms")
        print_dispatched_ops(resnet, resnet_probe)

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

    if "f" in args.parts:
        report_sink_costs(model, probe, quick=args.quick)

    if "i" in args.parts:
        report_examples_cost(quick=args.quick)


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
    # A failed snapshot, or failed writing, switches that part off with a warning; here it must
    # end the run, or the figures would be those of a monitor doing less.
    warnings.filterwarnings("error", message=r"filterviz: the snapshot at step \d+ failed")
    warnings.filterwarnings("error", message="filterviz: writing snapshot images failed")


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
    JOBS = ("_judge_and_publish", "_keep_and_publish_examples", "_publish_ending")

    def __init__(self, monitor: FilterMonitor) -> None:
        self.hooks = 0.0
        self.writer = 0.0
        for name in self.HOOKS:
            setattr(monitor, name, self._timed(getattr(monitor, name), time.perf_counter, "hooks"))
        delivery = monitor.engine._delivery
        for name in self.JOBS:  # the background writer runs these; thread_time is that thread's CPU
            setattr(delivery, name, self._timed(getattr(delivery, name), time.thread_time, "writer"))

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
        trainer = bench_trainer(log_dir, monitor, accelerator="cpu", **limits)
        start = time.perf_counter()
        trainer.fit(model, datamodule=data)
        return time.perf_counter() - start


def bench_trainer(
    log_dir: str, monitor: Optional[FilterMonitor], extra_callbacks: Sequence[Callback] = (), **settings
) -> Trainer:
    """A Trainer that does nothing but train (and log to TensorBoard), with or without the monitor;
    ``extra_callbacks`` (clocks) come after the monitor, so their hooks run after its own."""
    return Trainer(
        logger=TensorBoardLogger(log_dir, name="bench"),
        callbacks=([monitor] if monitor is not None else []) + list(extra_callbacks),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **settings,
    )


def example_model_and_probe() -> tuple[torch.nn.Module, torch.Tensor]:
    data = PhotoPatches()
    data.setup()
    images = torch.stack([data.val_set[index][0] for index in range(8)])
    return ImageClassifier(arch="small_cnn"), images


def snapshot_stall(
    model: torch.nn.Module,
    probe: torch.Tensor,
    repeats: int,
    forward_context: Optional[Callable] = None,
) -> tuple[float, float, float]:
    """Median training-thread time of a snapshot (the writer idle, so its work does not
    count), median plain eval forward of the probe, and the first snapshot's time.

    On a GPU the snapshot is timed as the training thread sees it (its GPU work is queued,
    not waited for); the forward includes its GPU time (a synchronize after it).
    """
    context = forward_context or contextlib.nullcontext
    with tempfile.TemporaryDirectory() as log_dir:
        writer = SummaryWriter(log_dir)
        visualizer = FilterVisualizer(writer, background=True)
        stalls, forwards = [], []
        for step in range(repeats + 1):
            visualizer.flush()  # measure the stall itself, not waiting on a full queue
            synchronize(probe.device)
            start = time.perf_counter()
            visualizer.snapshot(model, probe, step, forward_context=forward_context)
            stalls.append(time.perf_counter() - start)
            visualizer.flush()
            forwards.append(plain_eval_forward(model, probe, context))
        visualizer.close()
        writer.close()
    return statistics.median(stalls[1:]), statistics.median(forwards[1:]), stalls[0]


def print_dispatched_ops(
    model: torch.nn.Module, probe: torch.Tensor, forward_context: Optional[Callable] = None
) -> None:
    """Print the torch ops the training thread dispatches in a snapshot (after the first) and
    in the probe's plain eval forward. Each costs a trip through the dispatcher, and on a GPU
    most cost a kernel launch: where the host side of a small forward dominates, their ratio
    says what a snapshot's stall will be, on any machine."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpCounter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            self.ops += 1
            return func(*args, **(kwargs or {}))

    context = forward_context or contextlib.nullcontext
    with tempfile.TemporaryDirectory() as log_dir:
        visualizer = FilterVisualizer(log_dir, background=True)
        for step in range(2):  # the first snapshot's one-time work is not what is counted
            visualizer.snapshot(model, probe, step, forward_context=forward_context)
        visualizer.flush()
        with OpCounter() as in_snapshot:
            visualizer.snapshot(model, probe, 2, forward_context=forward_context)
        visualizer.close()
    training = model.training
    model.eval()
    with OpCounter() as in_forward, torch.no_grad(), context():
        model(model_input(probe.to(next(model.parameters()).device)))
    model.train(training)
    print(
        f"     dispatched ops: snapshot {in_snapshot.ops} / forward {in_forward.ops} = "
        f"{in_snapshot.ops / in_forward.ops:.2f}"
    )


def plain_eval_forward(
    model: torch.nn.Module, probe: torch.Tensor, context: Callable = contextlib.nullcontext
) -> float:
    model.eval()
    synchronize(probe.device)
    start = time.perf_counter()
    with torch.no_grad(), context():
        model(model_input(probe))
    synchronize(probe.device)
    elapsed = time.perf_counter() - start
    model.train()
    return elapsed


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resnet18_channels_last(size: int, device: torch.device, batch: int = 8) -> tuple[torch.nn.Module, torch.Tensor]:
    """torchvision's ResNet-18 (8 classes) and a probe of ``batch`` images, both channels_last."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=8).to(device, memory_format=torch.channels_last)
    probe = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    return model, probe


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


# ---------------------------------------------------------------- f. per logger

# One cycle of views_every=10 (the default): nine plain snapshots, and one that also draws
# the drift strips, the filmstrip, the peak patches and the through-the-layers images.
SINK_CYCLE = 10
SINK_STEP_SPAN = 1000  # steps between replays (the recorded ones stay below), so that each logger sees steps grow

# A snapshot as the engine writes it: ("images", {tag: pixels}, step), ("scalars", {tag: value}, step),
# ("table", tag, Table, step) or ("text", tag, text, step), in order; and how many of a cycle are like it.
Calls = list[tuple]
Cycle = list[tuple[int, Calls]]


def report_sink_costs(model: torch.nn.Module, probe: torch.Tensor, quick: bool) -> None:
    """Part f: per logger, the writer thread's time to write one snapshot (its PNG encoding
    apart, which every logger shares), and the training thread's where the sink calls its logger there."""
    repeats = 3 if quick else 7
    print(
        "\nf. writing one snapshot, per logger (FilterVisualizer(background=False)'s writes recorded once, "
        f"replayed into each sink; ms per snapshot over a views_every={SINK_CYCLE} cycle, median of {repeats})"
    )
    quiet_sink_loggers()
    print(f"   {logger_versions()}; cpu")
    models = [("example", model, probe)]
    if not quick:
        models.append(("resnet18 64x64 channels_last, probe 8", *resnet18_channels_last(64, torch.device("cpu"))))
    offsets = (index * SINK_STEP_SPAN for index in itertools.count(1))
    with tempfile.TemporaryDirectory() as root, bench_sinks(Path(root)) as sinks:
        for label, network, batch in models:
            report_model_sink_costs(label, sinks, record_cycle(network, batch), repeats, offsets)
    print(
        "   (MLflow's log_image encodes its own PNG and a WebP thumbnail from the pixels; W&B copies the shared "
        "PNG into its run, and its service process writes it out of this process)"
    )


def quiet_sink_loggers() -> None:
    """W&B offline and silent (set before wandb is imported); MLflow's and Alembic's start-up lines
    out of the figures (after mlflow is imported: importing it sets its logger's level)."""
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"
    import mlflow  # noqa: F401

    for name in ("mlflow", "alembic", "wandb"):
        logging.getLogger(name).setLevel(logging.ERROR)


def logger_versions() -> str:
    import lightning
    import mlflow
    import wandb

    return (
        f"torch {torch.__version__}, lightning {lightning.__version__}, "
        f"wandb {wandb.__version__}, mlflow {mlflow.__version__}"
    )


class RecordingSink(Sink):
    """Keeps what the engine writes, one list of calls per snapshot (a flush ends one), to be
    replayed into other sinks; images are kept as pixels, to be encoded afresh for each replay."""

    takes_images = True

    def __init__(self) -> None:
        self.snapshots: list[Calls] = [[]]

    def add_images(self, images: Mapping[str, EncodedImage], step: int) -> None:
        if images:
            self.snapshots[-1].append(("images", {tag: image.pixels for tag, image in images.items()}, step))

    def add_scalars(self, values: Mapping[str, float], step: int) -> None:
        if values:
            self.snapshots[-1].append(("scalars", dict(values), step))

    def add_table(self, tag: str, table: Table, step: int) -> None:
        self.snapshots[-1].append(("table", tag, table, step))

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.snapshots[-1].append(("text", tag, text, step))

    def flush(self) -> None:
        if self.snapshots[-1]:
            self.snapshots.append([])


def record_cycle(model: torch.nn.Module, probe: torch.Tensor) -> Cycle:
    """What the engine writes for a plain snapshot (the second of a run) and for one that draws
    the extra views (the tenth, its filmstrip ten rows tall), each with its share of a cycle.
    The first snapshot, with its one-time probe images and layer table, is left out."""
    recorder = RecordingSink()
    visualizer = FilterVisualizer(recorder, background=False, views_every=SINK_CYCLE)
    written = (1, SINK_CYCLE - 1)
    for index in range(SINK_CYCLE):
        # The others still update the statistics, drift and filmstrip rows, as in a run.
        visualizer.snapshot(model, probe, index * 10, publish=index in written)
    visualizer.close()
    plain, views = [calls for calls in recorder.snapshots if calls]
    return [(SINK_CYCLE - 1, plain), (1, views)]


@contextlib.contextmanager
def bench_sinks(root: Path) -> Iterator[dict[str, Sink]]:
    """The sinks part f compares, each over a fresh logger under ``root``; the group shares
    the single sinks' loggers (one W&B run per process)."""
    import wandb
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, WandbLogger

    from lightning_filterviz import LoggerMetricsSink, MLflowSink, WandbSink

    os.environ["WANDB_DIR"] = str(root)
    writer = SummaryWriter(str(root / "tensorboard"))
    csv_logger = CSVLogger(str(root / "csv"))
    tensorboard = TensorBoardSink(writer)
    with contextlib.redirect_stderr(io.StringIO()):  # wandb: Lightning's `anonymous` argument "has no effect"
        wandb_sink = WandbSink(WandbLogger(save_dir=str(root), offline=True, project="filterviz-bench"))
    mlflow_sink = MLflowSink(
        MLFlowLogger(tracking_uri=f"sqlite:///{root}/mlflow.db", artifact_location=f"{root}/artifacts")
    )
    try:
        yield {
            "TensorBoard": tensorboard,
            "PNG files + CSV": DirectorySink(root / "png"),
            "W&B (offline)": wandb_sink,
            "MLflow (SQLite)": mlflow_sink,
            "CSVLogger metrics": LoggerMetricsSink(csv_logger),
            "TensorBoard + W&B + MLflow": SinkGroup(
                {"TensorBoard": tensorboard, "W&B": wandb_sink, "MLflow": mlflow_sink}
            ),
        }
    finally:
        writer.close()
        csv_logger.save()
        wandb.finish()


def report_model_sink_costs(
    label: str, sinks: Mapping[str, Sink], cycle: Cycle, repeats: int, offsets: Iterator[int]
) -> None:
    encoding, costs = sink_costs(sinks, cycle, repeats, offsets)
    images = sum(weight * image_count(calls) for weight, calls in cycle) / sum(weight for weight, _ in cycle)
    print(
        f"   {label}: PNG encoding {statistics.median(encoding) * 1e3:.2f} ms per snapshot "
        f"({images:.1f} images; done once, whatever the number of loggers), then per logger:"
    )
    tensorboard = statistics.median(costs["TensorBoard"][0])
    for name, (writer_samples, training_samples) in costs.items():
        writer = statistics.median(writer_samples)
        line = f"     {name + ':':<28} writer thread {writer * 1e3:7.2f} ms"
        line += f" = {writer / tensorboard:6.2f}x TensorBoard's"
        if training_samples:
            line += f"; training thread {statistics.median(training_samples) * 1e3:.2f} ms"
        print(line)


def sink_costs(
    sinks: Mapping[str, Sink], cycle: Cycle, repeats: int, offsets: Iterator[int]
) -> tuple[list[float], dict[str, tuple[list[float], list[float]]]]:
    """Seconds per snapshot, weighted over the cycle, one sample per repetition: the PNG
    encoding, and per sink its writer thread and (for a sink that has ``on_training_thread``)
    its training thread. Each repetition encodes afresh, then replays into every sink in turn."""
    for sink in sinks.values():  # warm-up: the logger's first records, new tags, files opened
        calls = cycle[0][1]
        replay(sink, calls, encode(calls)[1], next(offsets))
    total = sum(weight for weight, _ in cycle)
    encoding: list[float] = []
    costs: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in sinks}
    for _ in range(repeats):
        encoded = [(weight, calls, *encode(calls)) for weight, calls in cycle]
        encoding.append(sum(weight * seconds for weight, _, seconds, _ in encoded) / total)
        for name, sink in sinks.items():
            writer = training = 0.0
            for weight, calls, _, pngs in encoded:
                on_writer, on_training = replay(sink, calls, pngs, next(offsets))
                writer += weight * on_writer / total
                training += weight * on_training / total
            costs[name][0].append(writer)
            if hasattr(sink, "on_training_thread"):
                costs[name][1].append(training)
    return encoding, costs


def encode(calls: Calls) -> tuple[float, dict[str, bytes]]:
    """PNG-encode a snapshot's images afresh, as the first sink to want them does: seconds, and the bytes by tag."""
    start = time.perf_counter()
    pngs = {tag: EncodedImage(pixels).png for call in calls if call[0] == "images" for tag, pixels in call[1].items()}
    return time.perf_counter() - start, pngs


def replay(sink: Sink, calls: Calls, pngs: Mapping[str, bytes], step_offset: int) -> tuple[float, float]:
    """Write a recorded snapshot to ``sink`` as the Publisher does, into fresh EncodedImages
    whose PNG bytes are already there: seconds on the writer thread (the calls and the flush),
    and on the training thread (``on_training_thread``, which the engine calls there)."""
    images = [
        {tag: preencoded(pixels, pngs[tag]) for tag, pixels in call[1].items()} for call in calls if call[0] == "images"
    ]
    start = time.perf_counter()
    for call in calls:
        kind, step = call[0], call[-1] + step_offset
        if kind == "images":
            sink.add_images(images.pop(0), step)
        elif kind == "scalars":
            sink.add_scalars(call[1], step)
        elif kind == "table":
            sink.add_table(call[1], call[2], step)
        else:
            sink.add_text(call[1], call[2], step)
    sink.flush()
    written = time.perf_counter()
    deliver = getattr(sink, "on_training_thread", None)
    if deliver is not None:
        deliver()
    return written - start, time.perf_counter() - written


def preencoded(pixels: Image, png: bytes) -> EncodedImage:
    """A fresh EncodedImage holding its PNG bytes already, as the first sink to ask leaves it
    for the others (its other cached views, such as ``rgb``, still to be made)."""
    image = EncodedImage(pixels)
    image.__dict__["png"] = png  # where functools.cached_property keeps its value
    return image


def image_count(calls: Calls) -> int:
    return sum(len(call[1]) for call in calls if call[0] == "images")


# ---------------------------------------------------------------- i. dataset examples

# What part i compares with no monitor at all: a label and FilterMonitor's settings (its defaults otherwise:
# a snapshot at the start and at each epoch's end, so no timed training step takes one).
EXAMPLES_SETTINGS: tuple[tuple[str, dict], ...] = (
    ("examples of the first conv (the default)", {}),
    ("monitor with examples off (examples_layers=[])", {"examples_layers": []}),
    ('examples of every conv (examples_layers=["*"])', {"examples_layers": ["*"]}),
)
EXAMPLES_GOAL = 1.10  # validation with the default examples / without the monitor


def report_examples_cost(quick: bool) -> None:
    """Part i: what collecting dataset examples costs the validation runs of ``fit``, and that the
    training steps do not pay for it. Each round fits once without the monitor and once with each
    of :data:`EXAMPLES_SETTINGS`, in an order that reverses every round (so drift in machine speed
    cancels); each setting's ratio is to the same round's fit without the monitor."""
    import lightning

    rounds, epochs, train_batches = (3, 2, 5) if quick else (7, 3, 6)
    data = PhotoPatches()  # the example's data: 800 validation images
    data.setup()
    val_batches = -(-len(data.val_set) // data.batch_size)
    print(
        f"\ni. dataset examples: validation in fit with the monitor / without it (example model and data, "
        f"{len(data.val_set)} validation images in {val_batches} batches of {data.batch_size}; "
        f"{epochs} epochs of {train_batches} training batches per fit, {rounds} rounds)"
    )
    print(
        f"   torch {torch.__version__}, lightning {lightning.__version__}; cpu, {torch.get_num_threads()} threads; "
        f"load average {os.getloadavg()[0]:.1f} at the start (on {os.cpu_count()} CPUs)"
    )
    settings: list[tuple[str, Optional[dict]]] = [("without", None), *EXAMPLES_SETTINGS]
    examples_fit(data, {"examples_layers": ["*"]}, epochs, train_batches)  # warm-up: imports, allocator, loaders
    clocks: dict[str, list[PhaseClock]] = {label: [] for label, _ in settings}
    for trial in range(rounds):
        for label, chosen in settings if trial % 2 == 0 else settings[::-1]:
            clocks[label].append(examples_fit(data, chosen, epochs, train_batches))
    without = clocks["without"]

    waits = [wait for label, _ in EXAMPLES_SETTINGS for clock in clocks[label] for wait in clock.writer_waits]
    print(
        "   the monitor's writer finishes its work, untimed, after the first snapshot and at each epoch's end "
        f"(snapshot, examples): median wait {statistics.median(waits) * 1e3:.0f} ms; so it shares no CPU with "
        "what is timed below"
    )
    print(
        f"   validation time per fit (its {epochs} validation runs, each on_validation_start to on_validation_end, "
        "the monitor's validation hooks inside; no sanity check), with / without the monitor:"
    )
    for label, _ in EXAMPLES_SETTINGS:
        ratios = paired_ratios([clock.validation for clock in clocks[label]], [clock.validation for clock in without])
        goal = f" [goal <= {EXAMPLES_GOAL:.2f}]" if label == EXAMPLES_SETTINGS[0][0] else ""
        print(f"     {label}: {ratio_summary(ratios, clocks[label], without, 'validation', 's')}{goal}")

    print("   writer thread, drawing and writing one validation run's examples (CPU):")
    for label, _ in EXAMPLES_SETTINGS:
        drawn = [seconds for clock in clocks[label] for seconds in clock.drawing]
        if drawn:
            print(f"     {label}: {statistics.median(drawn) * 1e3:.1f} ms (median of {len(drawn)})")

    steps = sum(len(clock.steps) for clock in without)
    print(
        "   training step, median per batch (on_train_batch_start to on_train_batch_end, the monitor's hooks "
        f"inside; {steps} steps per setting, none taking a snapshot), with / without the monitor:"
    )
    for label, _ in EXAMPLES_SETTINGS:
        ratios = paired_ratios([clock.step for clock in clocks[label]], [clock.step for clock in without])
        print(f"     {label}: {ratio_summary(ratios, clocks[label], without, 'step', 'ms')}")
    # Other processes on the CPUs slow every fit alike only on average: a busy machine shows in the pairs' spread.
    print(f"   load average {os.getloadavg()[0]:.1f} at the end (this run counts for up to {torch.get_num_threads()})")


class PhaseClock(Callback):
    """Times one fit, from after the monitor's hooks (it comes after the monitor among the
    callbacks): each validation run, on_validation_start to on_validation_end (the monitor's
    on_validation_epoch_start/end and its forward hooks lie inside); each training batch,
    on_train_batch_start to on_train_batch_end; and the writer thread's CPU time drawing and
    writing each validation run's dataset examples. At the start of training and at each epoch's
    end it waits, untimed, for the monitor's writer to finish what it has (see :meth:`_wait_for_writer`)."""

    def __init__(self, monitor: Optional[FilterMonitor]) -> None:
        self.monitor = monitor
        self.validations: list[float] = []
        self.steps: list[float] = []
        self.drawing: list[float] = []
        self.writer_waits: list[float] = []
        self._started = 0.0

    @property
    def validation(self) -> float:
        """Seconds in validation runs in this fit."""
        return sum(self.validations)

    @property
    def step(self) -> float:
        """Median seconds per training batch in this fit."""
        return statistics.median(self.steps)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None:  # the writer thread keeps, draws and writes each validation run's examples here
            delivery = self.monitor.engine._delivery
            delivery._keep_and_publish_examples = self._drawn(delivery._keep_and_publish_examples)
        self._wait_for_writer()  # the first snapshot

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._wait_for_writer()  # the examples drawn at the end of validation, and this epoch's snapshot

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._started = time.perf_counter()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.validations.append(time.perf_counter() - self._started)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.steps.append(time.perf_counter() - self._started)

    def _wait_for_writer(self) -> None:
        """Let the monitor's writer finish what it has, untimed: in these short epochs its drawing
        of a snapshot would share the CPUs with much of the next epoch's steps and validation (in the
        example's 63-batch epochs, with few of them), and its cost is measured apart (parts a and f)."""
        if self.monitor is not None:
            start = time.perf_counter()
            self.monitor.engine.flush()
            self.writer_waits.append(time.perf_counter() - start)

    def _drawn(self, publish: Callable) -> Callable:
        def timed(*args, **kwargs):
            start = time.thread_time()  # the writer thread runs this: its own CPU time
            try:
                return publish(*args, **kwargs)
            finally:
                self.drawing.append(time.thread_time() - start)

        return timed


def examples_fit(data: PhotoPatches, settings: Optional[dict], epochs: int, train_batches: int) -> PhaseClock:
    """Fit the example's model for ``epochs`` of ``train_batches`` batches, each followed by a
    validation run over the whole validation set; with FilterMonitor(**settings), or without
    the monitor when ``settings`` is None."""
    seed_everything(0, verbose=False)
    monitor = FilterMonitor(**settings) if settings is not None else None
    clock = PhaseClock(monitor)
    with tempfile.TemporaryDirectory() as log_dir:
        trainer = bench_trainer(
            log_dir, monitor, [clock], accelerator="cpu", max_epochs=epochs, limit_train_batches=train_batches
        )
        trainer.fit(ImageClassifier(arch="small_cnn"), datamodule=data)
    if len(clock.validations) != epochs:
        raise RuntimeError(f"expected {epochs} validation runs, timed {len(clock.validations)}")
    if settings is not None and settings.get("examples_layers") != [] and len(clock.drawing) != epochs:
        raise RuntimeError(f"expected dataset examples drawn {epochs} times, timed {len(clock.drawing)}")
    return clock


def paired_ratios(with_values: Sequence[float], without_values: Sequence[float]) -> list[float]:
    return [with_value / without_value for with_value, without_value in zip(with_values, without_values)]


def ratio_summary(
    ratios: Sequence[float],
    with_clocks: Sequence[PhaseClock],
    without_clocks: Sequence[PhaseClock],
    measure: str,
    unit: str,
) -> str:
    """The median ratio, the middle half of the pairs, the medians with and without, and every pair's ratio."""
    scale, digits = (1e3, 1) if unit == "ms" else (1.0, 2)
    with_median = statistics.median(getattr(clock, measure) for clock in with_clocks) * scale
    without_median = statistics.median(getattr(clock, measure) for clock in without_clocks) * scale
    lower, _, upper = statistics.quantiles(ratios, n=4)
    return (
        f"{statistics.median(ratios):.3f} (middle half {lower:.3f}..{upper:.3f}; "
        f"with {with_median:.{digits}f} {unit}, without {without_median:.{digits}f} {unit}, "
        f"ratios {', '.join(f'{ratio:.3f}' for ratio in ratios)})"
    )


# ---------------------------------------------------------------- on a GPU

CUDA_IMAGE_SIZE = 128
CUDA_BATCH_SIZE = 128


def cuda_report(quick: bool) -> None:
    """Parts g and h on the first CUDA device (see the module docstring)."""
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA device, and torch sees none here.")
    import lightning
    import torchvision

    from lightning_filterviz.publishing.sinks.checksums import _c_crc32c

    device = torch.device("cuda")
    print(
        f"{torch.cuda.get_device_name(device)}; torch {torch.__version__} (CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}), torchvision {torchvision.__version__}, "
        f"lightning {lightning.__version__}, Python {sys.version.split()[0]}; TensorBoard event checksums "
        f"{'in C (google-crc32c)' if _c_crc32c() is not None else 'in pure Python (google-crc32c missing)'}"
    )
    torch.backends.cudnn.benchmark = True
    trials, steps = (2, 60) if quick else (3, 200)
    data = resident_batches(device, batches=16)
    _, probe = resnet18_channels_last(CUDA_IMAGE_SIZE, device)
    probe = probe.cpu()  # as FilterMonitor keeps it; the engine pins it and copies it asynchronously
    # The process's one-time costs (cuDNN's choice of kernels for the probe's shapes, the first
    # launch of each kernel) in a run of their own, not in the first monitored trial.
    cuda_run(data, 20)(FilterMonitor(every_n_steps=5, probe=probe))

    print(
        f"\ng. training wall time, with monitor / without (ResNet-18, 16-mixed, steps 1 to {steps}, "
        "median of pairs)"
    )
    for label, settings, baseline in (
        ("every_n_steps=10", {"every_n_steps": 10}, None),
        ("every_n_steps=100", {"every_n_steps": 100}, None),
        (
            "track_training_batches=True / False (both every_n_steps=100)",
            {"every_n_steps": 100, "track_training_batches": True},
            {"every_n_steps": 100},
        ),
    ):
        run = cuda_run(data, steps)
        run.monitor_settings = {**settings, "probe": probe}  # type: ignore[attr-defined]
        run.baseline = {**baseline, "probe": probe} if baseline is not None else None  # type: ignore[attr-defined]
        report_ratio(label, run, trials)

    print("\nh. one snapshot on the training thread (FilterVisualizer(background=True), probe 8, fp16 autocast)")
    model, probe = resnet18_channels_last(CUDA_IMAGE_SIZE, device)
    stall, forward, first = snapshot_stall(model, probe, repeats=10 if quick else 30, forward_context=_fp16_autocast)
    print(f"   snapshot {stall * 1e3:.2f} ms / forward {forward * 1e3:.2f} ms = {stall / forward:.2f}")
    print(f"     first snapshot (one-time work included): {first * 1e3:.1f} ms")
    print_dispatched_ops(model, probe, forward_context=_fp16_autocast)
    per_snapshot, per_tracked_forward = count_host_syncs(model, probe)
    print(f"   host synchronizations: {per_snapshot} per snapshot, {per_tracked_forward} per tracked training forward")
    waited = "no: they returned at once" if snapshots_return_while_gpu_busy(model, probe) else "YES: one of them waited"
    print(f"   did 3 snapshots wait for GPU work queued before them? {waited}")


def _fp16_autocast() -> contextlib.AbstractContextManager:
    return torch.autocast("cuda", dtype=torch.float16)


def resident_batches(device: torch.device, batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches already on the GPU, so that the run measures training, not loading."""
    generator = torch.Generator(device=device).manual_seed(0)
    shape = (CUDA_BATCH_SIZE, 3, CUDA_IMAGE_SIZE, CUDA_IMAGE_SIZE)
    return [
        (
            torch.randn(shape, device=device, generator=generator).contiguous(memory_format=torch.channels_last),
            torch.randint(0, 8, (CUDA_BATCH_SIZE,), device=device, generator=generator),
        )
        for _ in range(batches)
    ]


def cuda_run(data: list, steps: int) -> Callable[[Optional[FilterMonitor]], float]:
    from torch.utils.data import DataLoader

    def run(monitor: Optional[FilterMonitor]) -> float:
        seed_everything(0, verbose=False)
        model = ImageClassifier(arch="resnet18", lr=1e-3).to(memory_format=torch.channels_last)
        clock = TrainingStepsClock()
        with tempfile.TemporaryDirectory() as log_dir:
            trainer = bench_trainer(
                log_dir, monitor, [clock], accelerator="gpu", devices=1, precision="16-mixed", max_steps=steps,
                limit_val_batches=0,
            )
            trainer.fit(model, train_dataloaders=DataLoader(data, batch_size=None))
        if clock.start is None or clock.elapsed == 0.0:
            raise RuntimeError(f"the fit ended before its step {steps}: nothing was timed")
        return clock.elapsed

    return run


class TrainingStepsClock(Callback):
    """Wall time from the start of the second training step to the end of the last, the GPU
    drained at both ends: the steady state of training, snapshots included, without the
    first snapshot's one-time work (part h reports it) or the fit's start and end."""

    def __init__(self) -> None:
        self.start: Optional[float] = None
        self.elapsed = 0.0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == 1 and self.start is None:
            torch.cuda.synchronize()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.start is not None and trainer.global_step == trainer.max_steps:
            torch.cuda.synchronize()
            self.elapsed = time.perf_counter() - self.start


def count_host_syncs(model: torch.nn.Module, probe: torch.Tensor) -> tuple[int, int]:
    """Host synchronizations on the training thread: in one snapshot after the first, and in
    one training forward watched by ``training_batch`` (counted by torch's sync debug mode)."""
    with tempfile.TemporaryDirectory() as log_dir:
        visualizer = FilterVisualizer(log_dir, background=True)
        for step in range(2):  # the first snapshot's one-time work is not what is counted
            visualizer.snapshot(model, probe, step, forward_context=_fp16_autocast)
        visualizer.flush()
        batch = torch.randn(CUDA_BATCH_SIZE, *probe.shape[1:], device=probe.device)
        batch = batch.contiguous(memory_format=torch.channels_last)
        model.train()
        with visualizer.training_batch(model), _fp16_autocast():
            model(batch)
        per_snapshot = len(_syncs(lambda: visualizer.snapshot(model, probe, 2, forward_context=_fp16_autocast)))

        def tracked_forward() -> None:
            with visualizer.training_batch(model), _fp16_autocast():
                model(batch)

        per_forward = len(_syncs(tracked_forward))
        visualizer.close()
    return per_snapshot, per_forward


def snapshots_return_while_gpu_busy(model: torch.nn.Module, probe: torch.Tensor) -> bool:
    """Whether three snapshots (the writer's queue then full) return while GPU work queued
    before them still runs: a wait the sync debug mode does not count (an event, a pinned
    allocation) would have the training thread wait for it."""
    with tempfile.TemporaryDirectory() as log_dir:
        visualizer = FilterVisualizer(log_dir, background=True, max_pending=2)
        visualizer.snapshot(model, probe, 0, forward_context=_fp16_autocast)
        visualizer.flush()
        torch.cuda.synchronize()
        torch.cuda._sleep(4_000_000_000)  # about two seconds of GPU time
        ahead = torch.cuda.Event()
        ahead.record()
        for step in range(1, 4):
            visualizer.snapshot(model, probe, step, forward_context=_fp16_autocast)
        returned_first = not ahead.query()
        visualizer.close()
    return returned_first


def _syncs(work: Callable[[], None]) -> list:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            work()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [warning for warning in caught if "synchroniz" in str(warning.message)]


if __name__ == "__main__":
    main()
