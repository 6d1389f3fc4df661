"""On any machine: the training thread reads no tensor's value on the host after the first
snapshot.

On a GPU each such read (``.item()``, ``.cpu()``, ``bool(tensor)``, ``nonzero`` ...) makes the
host wait for the GPU; tests/test_cuda.py counts those waits with torch's sync debug mode
where a GPU exists. Here, on the CPU, the code runs under a torch function mode that
records every call that would read a value on the host, so that a new one in the
device-independent code is caught without a GPU. What only a GPU shows (a copy between
devices from pageable memory, the CUDA-only branches) is left to tests/test_cuda.py.
"""

from __future__ import annotations

import threading
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from conftest import Classifier, FilterMonitor, RandomImages, pl, read_events, resnet18_channels_last, trainer_kwargs
import lightning_filterviz
from lightning_filterviz import FilterVisualizer

PACKAGE = Path(lightning_filterviz.__file__).parent
TORCH = Path(torch.__file__).parent

# Calls that, on a CUDA tensor, wait for the GPU to hand a value to Python or to the host.
HOST_READS: frozenset[Callable[..., Any]] = frozenset(
    {
        Tensor.item,
        Tensor.tolist,
        Tensor.numpy,
        Tensor.__array__,
        Tensor.cpu,
        Tensor.__bool__,
        Tensor.__float__,
        Tensor.__int__,
        Tensor.__index__,
        Tensor.__format__,
        Tensor.__repr__,
        Tensor.nonzero,
        torch.nonzero,
        Tensor.masked_select,
        torch.masked_select,
        Tensor.unique,
        torch.unique,
        torch.equal,
        torch.allclose,
        Tensor.bincount,
        torch.bincount,
    }
)


class HostReads(TorchFunctionMode):
    """Records the host reads made on the thread that entered it, with the line that made each."""

    def __init__(self, only_from: Optional[Path] = None, active: bool = True) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        self.only_from = only_from
        self.active = active
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        reads = func in HOST_READS or _indexes_by_mask(func, args)
        if reads and self.active and threading.get_ident() == self.thread:
            caller = _caller()
            if self.only_from is None or Path(caller.filename).is_relative_to(self.only_from):
                self.seen.append(f"{getattr(func, '__name__', func)} at {caller.filename}:{caller.lineno}")
        return func(*args, **(kwargs or {}))


def _caller() -> traceback.FrameSummary:
    """The innermost frame outside torch and this file: the code that asked for the read."""
    outside = (frame for frame in reversed(traceback.extract_stack()) if frame.filename != __file__)
    return next(frame for frame in outside if not Path(frame.filename).is_relative_to(TORCH))


def _indexes_by_mask(func: Callable[..., Any], args: tuple) -> bool:
    """``tensor[mask]``: the result's size depends on the mask's values."""
    if func is not Tensor.__getitem__ or len(args) < 2:
        return False
    indices = args[1] if isinstance(args[1], tuple) else (args[1],)
    return any(isinstance(index, Tensor) and index.dtype == torch.bool for index in indices)


def test_the_recorder_sees_each_kind_of_host_read():
    values = torch.tensor([1.0, -2.0])
    reads = [
        lambda: values[0].item(),
        lambda: values.tolist(),
        lambda: bool(values[0]),
        lambda: float(values[0]),
        lambda: [0, 1][values[0].long()],
        lambda: values[values > 0],
        lambda: torch.nonzero(values),
        lambda: values.numpy(),
        lambda: f"{values[0]:.1f}",
    ]
    for read in reads:
        with HostReads() as recorder:
            read()
        assert len(recorder.seen) == 1, recorder.seen
    with HostReads() as recorder:
        (values * 2).amax().neg_()
        values[1:].clamp(min=0)
    assert recorder.seen == []


def test_snapshots_after_the_first_read_nothing_on_the_training_thread(tmp_path):
    model, probe = resnet18_channels_last()
    visualizer = FilterVisualizer(str(tmp_path), background=True, views_every=2, history_dir=str(tmp_path / "history"))
    # The first snapshot finds each conv's activation and measures receptive fields (one-time work).
    visualizer.snapshot(model, probe, 0)
    visualizer.flush()
    with HostReads() as recorder:
        for step in (1, 2, 3):  # the 2nd and 4th snapshots draw the costly views too
            visualizer.snapshot(model, probe, step)
    visualizer.close()
    assert recorder.seen == []
    # The writer thread did read them: every snapshot was judged and drawn.
    assert visualizer.dead_filters.keys() >= {"conv1", "layer4.1.conv1"}
    assert sorted(path.name for path in (tmp_path / "activations" / "conv1").iterdir()) == [
        f"step_{step:08d}.png" for step in range(4)
    ]
    assert sorted(path.name for path in (tmp_path / "responses" / "conv1").iterdir()) == [
        "step_00000000.png", "step_00000001.png", "step_00000003.png"
    ]


def test_a_tracked_training_forward_reads_nothing_on_the_host(tmp_path):
    model, probe = resnet18_channels_last()
    visualizer = FilterVisualizer(str(tmp_path), background=True)
    visualizer.snapshot(model, probe, 0)
    visualizer.flush()
    model.train()
    batch = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with HostReads() as recorder:
        for _ in range(2):
            with visualizer.training_batch(model):
                model(batch).sum().backward()
    visualizer.snapshot(model, probe, 1)
    visualizer.close()
    assert recorder.seen == []
    assert visualizer.dead_filters.keys() >= {"conv1", "layer4.1.conv1"}


def test_the_callback_reads_nothing_on_the_host_after_its_first_snapshot(tmp_path):
    monitor = FilterMonitor(every_n_steps=2, track_training_batches=True)
    # Only reads made by the package count: Lightning reads the loss for its own logging.
    recorder = HostReads(only_from=PACKAGE, active=False)
    trainer = pl.Trainer(
        callbacks=[monitor, _StartRecordingAfterFirstBatch(recorder)], **trainer_kwargs(tmp_path, max_epochs=2)
    )
    with recorder:
        trainer.fit(Classifier(), datamodule=RandomImages())
    assert recorder.active  # snapshots, tracked training batches and validation batches were recorded
    assert recorder.seen == []
    events = read_events(trainer.logger.log_dir)
    assert sorted(events.images["filterviz/activations/net.0"]) == list(range(0, trainer.global_step + 1, 2))


class _StartRecordingAfterFirstBatch(pl.Callback):
    """Batch 0 takes the first snapshot, whose one-time work is not recorded."""

    def __init__(self, recorder: HostReads) -> None:
        self.recorder = recorder

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        self.recorder.active = True
