"""The background writer: same pixels as the synchronous path, errors reported once, nothing kept."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import weakref

import pytest
import torch

from conftest import REPO, FunctionalNet, conv_bn_relu_stack, failing_view, registered
from lightning_filterviz import FilterVisualizer
from lightning_filterviz.views.registry import View
from lightning_filterviz.engine.writer_thread import BackgroundWriter


def snapshots(visualizer: FilterVisualizer, model: torch.nn.Module, steps: int = 3) -> None:
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(4, 3, 10, 10, generator=generator)
    for step in range(steps):
        visualizer.snapshot(model, probe, step)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)


def test_background_images_equal_synchronous_images(tmp_path):
    model = FunctionalNet()
    with torch.no_grad():
        model.conv2.bias[3] = -1e4
    reference = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    synchronous = FilterVisualizer(str(tmp_path / "sync"), dead_patience=1)
    snapshots(synchronous, model)
    synchronous.finish(3)
    model.load_state_dict(reference)
    background = FilterVisualizer(str(tmp_path / "background"), dead_patience=1, background=True)
    snapshots(background, model)
    background.finish(3)
    background.close()

    sync_files = sorted(path.relative_to(tmp_path / "sync") for path in (tmp_path / "sync").rglob("*.png"))
    background_files = sorted(path.relative_to(tmp_path / "background") for path in (tmp_path / "background").rglob("*.png"))
    # Per snapshot: weights and activations of 2 convs; at the first two (the views): their
    # drift strips, the first conv's peak patches and filmstrip, 2 probe images through the
    # layers, and at the first the probe; at the end: the filmstrip, the last snapshot's
    # drift strips and the probe again.
    views = 2 + 1 + 1 + 2
    assert sync_files == background_files and len(sync_files) == 3 * 2 * 2 + (views + 1) + views + (1 + 2 + 1)
    for relative in sync_files:
        assert (tmp_path / "sync" / relative).read_bytes() == (tmp_path / "background" / relative).read_bytes()
    assert (tmp_path / "sync/scalars.csv").read_text() == (tmp_path / "background/scalars.csv").read_text()


def test_an_exception_in_the_worker_is_one_warning_and_statistics_go_on(tmp_path):
    model = conv_bn_relu_stack()
    with torch.no_grad():
        model[3].bias[0] = -1e4
    visualizer = FilterVisualizer(str(tmp_path), background=True)
    with registered(failing_view("worker broke")), pytest.warns(UserWarning, match="RuntimeError: worker broke") as record:
        for step in range(4):
            visualizer.snapshot(model, torch.randn(2, 3, 8, 8), step)
        visualizer.close()
    assert len([w for w in record if "worker broke" in str(w.message)]) == 1
    assert visualizer.dead_filters["3"] == [0]


def test_a_full_queue_blocks_the_caller_instead_of_dropping(tmp_path):
    release = threading.Event()
    done = []
    writer = BackgroundWriter(max_pending=1)
    writer.submit(lambda: (release.wait(5), done.append(1)))
    writer.submit(lambda: done.append(2))  # waits in the queue
    third = threading.Thread(target=lambda: writer.submit(lambda: done.append(3)))
    third.start()
    third.join(timeout=0.2)
    assert third.is_alive()  # blocked: the queue is full
    release.set()
    third.join(timeout=5)
    writer.close()
    assert done == [1, 2, 3]


class KeepsWeakReferences:
    """A sink (duck-typed) that keeps a weak reference to the pixels of every image it gets."""

    def __init__(self) -> None:
        self.images: list[weakref.ref] = []

    def add_image(self, tag: str, image: object, step: int) -> None:
        self.images.append(weakref.ref(getattr(image, "indices", image)))  # the pixels of an IndexedImage

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        pass

    def add_text(self, tag: str, text: str, step: int) -> None:
        pass

    def flush(self) -> None:
        pass


def test_no_activation_tensor_or_image_outlives_its_snapshot(tmp_path):
    arrived: list[weakref.ref] = []

    class KeepsWeakReferencesToTheArrivedTensors(View):
        def at_snapshot(self, snapshot, context):  # the snapshot's tensors, as they land on the writer
            arrived.extend(weakref.ref(layer.maps) for layer in snapshot.layers.values())
            arrived.extend(weakref.ref(layer.channel_max) for layer in snapshot.layers.values())

    sink = KeepsWeakReferences()
    model = conv_bn_relu_stack()
    visualizer = FilterVisualizer(sink, background=True)
    with registered(KeepsWeakReferencesToTheArrivedTensors):
        for step in range(5):
            snapshot = visualizer.snapshot(model, torch.randn(4, 3, 16, 16), step)
            del snapshot
        visualizer.flush()
    gc.collect()
    # Weights and activations of 2 convs per snapshot, and the first one's views.
    assert len(sink.images) >= 5 * 4 and len(arrived) == 5 * 4
    assert [ref for ref in sink.images + arrived if ref() is not None] == []


def test_snapshots_still_queued_when_a_script_ends_are_written(tmp_path):
    script = f"""
import torch
from torch import nn
from lightning_filterviz import FilterVisualizer
model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
visualizer = FilterVisualizer({str(tmp_path)!r}, background=True, max_pending=8)
for step in range(5):
    visualizer.snapshot(model, torch.randn(2, 3, 8, 8), step)
# no flush(), no close(): the interpreter exits with snapshots still queued
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO)
    written = sorted(path.name for path in (tmp_path / "weights" / "0").iterdir())
    assert written == [f"step_{step:08d}.png" for step in range(5)]
