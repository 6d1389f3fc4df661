"""On a GPU: a snapshot and a tracked training forward leave the training thread without
waiting for the GPU, and give what the same snapshot gives on the CPU; feature visualization
gives on the GPU the images it gives on the CPU.

These need a CUDA device; without one they are skipped (and say so).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import (
    Classifier,
    FilterMonitor,
    RandomImages,
    conv_bn_relu_stack,
    pl,
    read_events,
    resnet18_channels_last,
    trainer_kwargs,
)
from lightning_filterviz import FilterVisualizer
from lightning_filterviz.capture.feature_visualization import visualize_filters
from lightning_filterviz.integration.validation_examples import ValidationExamples

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device: checks host synchronizations and GPU results"
)


@contextlib.contextmanager
def no_host_synchronization() -> Iterator[None]:
    """Any operation that makes the host wait for the GPU raises inside this block."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def fp16_autocast() -> contextlib.AbstractContextManager:
    return torch.autocast("cuda", dtype=torch.float16)


def test_snapshots_after_the_first_make_no_host_synchronization(tmp_path):
    model, probe = resnet18_channels_last("cuda", images=8, size=64)
    visualizer = FilterVisualizer(str(tmp_path), background=True, views_every=2)
    # The first snapshot finds each conv's activation and measures receptive fields (one-time work).
    visualizer.snapshot(model, probe, 0, forward_context=fp16_autocast)
    visualizer.flush()
    with no_host_synchronization():
        visualizer.snapshot(model, probe, 1, forward_context=fp16_autocast)  # draws the views too
        visualizer.snapshot(model, probe, 2, forward_context=fp16_autocast)
    visualizer.close()
    assert visualizer.dead_filters.keys() >= {"conv1", "layer1.0.conv1"}
    assert (tmp_path / "activations" / "conv1" / "step_00000002.png").is_file()
    assert (tmp_path / "responses" / "conv1" / "step_00000001.png").is_file()


def test_a_snapshot_returns_while_earlier_gpu_work_still_runs(tmp_path):
    """What sync debug mode does not see (an event waited on, an allocation that waits for
    the device): the training thread leaves a snapshot before the GPU work queued ahead of
    it has finished, with the writer queue as full as it may get."""
    model, probe = resnet18_channels_last("cuda", images=8, size=64)
    visualizer = FilterVisualizer(str(tmp_path), background=True, max_pending=2)
    visualizer.snapshot(model, probe, 0, forward_context=fp16_autocast)
    visualizer.flush()
    torch.cuda.synchronize()
    torch.cuda._sleep(4_000_000_000)  # about two seconds of one GPU core spinning, queued first
    ahead = torch.cuda.Event()
    ahead.record()
    for step in range(1, 4):
        visualizer.snapshot(model, probe, step, forward_context=fp16_autocast)
    assert not ahead.query()  # still running: no snapshot waited for it
    visualizer.close()
    assert sorted(path.name for path in (tmp_path / "activations" / "conv1").iterdir()) == [
        f"step_{step:08d}.png" for step in range(4)
    ]


def test_a_snapshot_kept_by_its_caller_holds_no_pinned_memory(tmp_path):
    """Otherwise every kept snapshot would hold a block of pinned memory, and each later copy
    would pin new memory, which makes the whole GPU wait."""
    model, probe = resnet18_channels_last("cuda", images=8, size=64)
    visualizer = FilterVisualizer(str(tmp_path), background=True)
    kept = [visualizer.snapshot(model, probe, step, forward_context=fp16_autocast) for step in range(3)]
    visualizer.close()
    arrived = [
        tensor
        for snapshot in kept
        for layer in snapshot.layers.values()
        for tensor in (layer.weight, layer.channel_max, layer.maps)
        if tensor is not None
    ]
    assert len(arrived) > 3 * 20
    assert not any(tensor.is_pinned() or tensor.is_cuda for tensor in arrived)
    assert all(tensor.dtype == torch.float32 for tensor in arrived)  # the float16 maxima too


def test_a_tracked_training_forward_makes_no_host_synchronization(tmp_path):
    model, probe = resnet18_channels_last("cuda", images=8, size=64)
    visualizer = FilterVisualizer(str(tmp_path), background=True)
    visualizer.snapshot(model, probe, 0)
    visualizer.flush()
    batch = torch.randn(16, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
    model.train()
    with no_host_synchronization():
        for _ in range(2):
            with visualizer.training_batch(model), fp16_autocast():
                model(batch)
    visualizer.snapshot(model, probe, 1)
    visualizer.close()
    assert visualizer.dead_filters.keys() >= {"conv1", "layer4.1.conv1"}


def test_collecting_and_publishing_dataset_examples_make_no_host_synchronization(tmp_path):
    model, probe = resnet18_channels_last("cuda", images=8, size=64)
    visualizer = FilterVisualizer(str(tmp_path), background=True)
    visualizer.snapshot(model, probe, 0)  # finds conv1's activation and measures its receptive field
    visualizer.flush()
    collector = visualizer.dataset_examples_pass(model)
    images = torch.randn(16, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
    loader = DataLoader(TensorDataset(torch.zeros(16)), batch_size=8)  # in order: index = position
    examples = ValidationExamples()
    model.eval()
    with no_host_synchronization(), torch.no_grad():
        examples.start(collector, loader, images.device)
        for batch in images.split(8):
            examples.next_batch(batch)
            model(batch)
        finished = examples.stop()
        visualizer.publish_dataset_examples(finished.results(), model, 1)
    visualizer.close()
    found = visualizer.dataset_examples["conv1"]
    assert len(found) == 64 and all(len(per_filter) == 9 for per_filter in found)
    assert {index for per_filter in found for index, _ in per_filter} <= set(range(16))


def test_a_plain_loop_may_give_the_dataset_indices_on_the_cpu(tmp_path):
    model, probe = resnet18_channels_last("cuda", images=8, size=64)
    visualizer = FilterVisualizer(str(tmp_path), background=True)
    visualizer.snapshot(model, probe, 0)
    visualizer.flush()
    collector = visualizer.dataset_examples_pass(model)
    images = torch.randn(16, 3, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last)
    model.eval()
    with collector.collecting(), torch.no_grad():
        for start in (0, 8):
            collector.next_batch(images[start : start + 8], torch.arange(start, start + 8))
            model(images[start : start + 8])
    visualizer.publish_dataset_examples(collector.results(), model, 1)
    visualizer.close()
    found = visualizer.dataset_examples["conv1"]
    assert {index for per_filter in found for index, _ in per_filter} <= set(range(16))
    assert len({index for per_filter in found for index, _ in per_filter}) > 1


def test_a_probe_written_in_place_between_snapshots_is_copied_to_the_gpu_again(tmp_path):
    model = conv_bn_relu_stack().cuda()
    probe = torch.randn(2, 3, 8, 8)
    visualizer = FilterVisualizer(str(tmp_path))
    first = visualizer.snapshot(model, probe, 0)
    probe.neg_()  # the same tensor, new values
    second = visualizer.snapshot(model, probe, 1)
    visualizer.close()
    assert not torch.equal(first.layers["0"].maps, second.layers["0"].maps)


def test_a_gpu_snapshot_equals_the_cpu_snapshot(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # full float32 convs, as on the CPU
    model = conv_bn_relu_stack()
    with torch.no_grad():
        model[3].bias[2] = -1e4  # dead
    probe = torch.randn(4, 3, 10, 10)
    on_cpu = FilterVisualizer(str(tmp_path / "cpu"), dead_patience=1)
    cpu_snapshot = on_cpu.snapshot(model, probe, 0)
    model.cuda()
    on_gpu = FilterVisualizer(str(tmp_path / "gpu"), dead_patience=1, background=True)
    gpu_snapshot = on_gpu.snapshot(model, probe, 0)
    on_gpu.close()
    assert on_gpu.dead_filters == on_cpu.dead_filters == {"0": [], "3": [2]}
    for name, expected in cpu_snapshot.layers.items():
        captured = gpu_snapshot.layers[name]
        for field in ("weight", "channel_max", "channel_mean_abs", "maps"):
            torch.testing.assert_close(getattr(captured, field), getattr(expected, field), rtol=1e-4, atol=1e-5)
        assert captured.weight.device.type == "cpu"


def test_a_trainer_on_the_gpu_logs_every_snapshot(tmp_path):
    monitor = FilterMonitor(every_n_steps=2, track_training_batches=True)
    trainer = pl.Trainer(
        callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1, accelerator="gpu", precision="16-mixed")
    )
    trainer.fit(Classifier(), datamodule=RandomImages())
    events = read_events(trainer.logger.log_dir)
    assert set(events.images["filterviz/activations/net.0"]) == {0, 2, 4}
    assert monitor.dead_filters.keys() == {"net.0", "net.3"}


@pytest.mark.parametrize("stop_at_conv_input", [False, True], ids=["full-forward", "from-the-conv-input"])
def test_feature_visualization_on_the_gpu_equals_the_cpu(monkeypatch, stop_at_conv_input):
    # Full float32 convs, as on the CPU (matmuls are full float32 by default).
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = conv_bn_relu_stack().eval()
    conv, tap = model[0], model[1]  # the first conv and its batch norm, in eval mode
    probe = torch.randn(4, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    channels = [0, 2, 3]
    on_cpu = visualize_filters(model, tap, channels, probe, steps=16, conv=conv if stop_at_conv_input else None)
    model.cuda()
    parameters = [parameter.detach().clone() for parameter in model.parameters()]
    on_gpu = visualize_filters(
        model, tap, channels, probe.cuda(), steps=16, conv=conv if stop_at_conv_input else None
    )
    # The same private CPU generator draws the same start and the same transforms on both devices;
    # cuFFT and cuDNN round differently from the CPU, so a pixel may differ by a few levels.
    assert on_gpu.shape == on_cpu.shape == (3, 24, 24, 3)
    difference = np.abs(on_gpu.astype(int) - on_cpu.astype(int))
    assert difference.mean() < 1.0 and difference.max() <= 8
    assert all(torch.equal(before, after) for before, after in zip(parameters, model.parameters()))
    assert all(parameter.grad is None for parameter in model.parameters())


def test_a_trainer_on_the_gpu_logs_feature_visualizations(tmp_path):
    monitor = FilterMonitor(featvis_layers=["net.0"], examples_layers=[])
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1, accelerator="gpu"))
    trainer.fit(Classifier(), datamodule=RandomImages())
    images = monitor.feature_visualizations["net.0"]
    assert images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] == 3
    assert images.std() > 0  # not one flat colour: the optimization moved the images
    events = read_events(trainer.logger.log_dir)
    assert "filterviz/feature_vis/net.0" in events.images
