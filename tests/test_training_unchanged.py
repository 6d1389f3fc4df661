"""The monitor's own passes leave every buffer a forward can change as the training left it:
fake-quant observers of quantization-aware training, a user's counters and running statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conftest import Classifier, FilterMonitor, RandomImages, pl, read_events, trainer_kwargs
from lightning_filterviz import FilterVisualizer


class CountsItsCalls(nn.Module):
    """Counts its forward calls and keeps the largest input it saw, in eval mode too: the
    counter in place, the maximum by reassigning the buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("largest", torch.full((), float("-inf")))

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        self.largest = torch.maximum(self.largest, x.detach().amax())
        return x


class Resizes(nn.Module):
    """Resizes its buffer at its first call, as per-channel observers do."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("per_channel", torch.empty(0))

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            if self.per_channel.numel() == 0:
                self.per_channel.resize_(x.shape[1])
            self.per_channel.copy_(x.detach().amax(dim=(0, 2, 3)))
        return x


def counting_net() -> nn.Sequential:
    return nn.Sequential(
        CountsItsCalls(),
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        CountsItsCalls(),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def test_a_snapshot_leaves_counters_resized_and_reassigned_buffers_as_they_were(tmp_path):
    model = nn.Sequential(Resizes(), *counting_net())
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    identities = {name: buffer for name, buffer in model.named_buffers()}
    engine = FilterVisualizer(str(tmp_path), response_layers=["2"], examples_layers=[])
    snapshot = engine.snapshot(model, torch.randn(2, 3, 12, 12), step=0)
    assert snapshot.receptive_fields  # the receptive-field pass ran as well as the probe pass
    after = dict(model.named_buffers())
    for name, buffer in before.items():
        assert after[name] is identities[name], name  # the user's own tensor, registered again
        assert after[name].shape == buffer.shape and torch.equal(after[name], buffer), name
    model(torch.randn(2, 3, 12, 12))  # the model's own forward still changes them
    assert int(model[1].calls) == 1 and model[0].per_channel.shape == (3,)


def test_buffers_are_put_back_without_touching_a_graph_that_saved_them(tmp_path):
    """A snapshot between a forward and its backward (lazy modules are given their weights by
    the first forward) writes the buffers back without bumping their version counters."""

    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.register_buffer("mask", torch.ones(1, 4, 1, 1))
            self.register_buffer("seen", torch.zeros(()))

        def forward(self, x: Tensor) -> Tensor:
            self.seen.add_(1)
            return F.relu(self.conv(x)) * self.mask  # the mask is saved for the backward

    model = Masked()
    loss = model(torch.randn(2, 3, 8, 8)).sum()
    FilterVisualizer(str(tmp_path)).snapshot(model, torch.randn(2, 3, 8, 8), step=0)
    loss.backward()  # would raise if the snapshot had bumped the mask's version
    assert model.conv.weight.grad is not None and float(model.seen) == 1


class CountingClassifier(Classifier):
    def __init__(self) -> None:
        super().__init__(counting_net())


class BufferLog(pl.Callback):
    """Every buffer's values after each training batch and each validation run (after the
    monitor's hooks: it comes after the monitor in the callback list)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Tensor]] = []

    def _keep(self, pl_module: Any) -> None:
        self.seen.append({name: buffer.clone() for name, buffer in pl_module.named_buffers()})

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        self._keep(pl_module)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._keep(pl_module)


def fit_logging_buffers(tmp_path: Path, model_class: type, with_monitor: bool) -> tuple[dict, list, list]:
    pl.seed_everything(3)
    model = model_class()
    log = BufferLog()
    monitor = [FilterMonitor(every_n_steps=1, probe_size=4, track_training_batches=True)] if with_monitor else []
    trainer = pl.Trainer(callbacks=[*monitor, log], **trainer_kwargs(tmp_path, max_epochs=2))
    trainer.fit(model, datamodule=RandomImages())
    modes = [module.training for module in model.modules()]
    return model.state_dict(), log.seen, modes


def assert_same_run(first: tuple[dict, list, list], second: tuple[dict, list, list]) -> None:
    state_a, seen_a, modes_a = first
    state_b, seen_b, modes_b = second
    assert state_a.keys() == state_b.keys()
    for key in state_a:  # every parameter and buffer
        assert torch.equal(state_a[key], state_b[key]), key
    assert len(seen_a) == len(seen_b)
    for index, (buffers_a, buffers_b) in enumerate(zip(seen_a, seen_b)):
        for name in buffers_a:
            assert torch.equal(buffers_a[name], buffers_b[name]), (index, name)
    assert modes_a == modes_b


def test_a_counter_in_a_buffer_counts_only_the_training_and_validation_forwards(tmp_path):
    without = fit_logging_buffers(tmp_path / "a", CountingClassifier, with_monitor=False)
    assert_same_run(without, fit_logging_buffers(tmp_path / "b", CountingClassifier, with_monitor=False))
    with_monitor = fit_logging_buffers(tmp_path / "c", CountingClassifier, with_monitor=True)
    assert read_events(tmp_path / "c" / "tb" / "version_0").images  # the monitor did run
    assert_same_run(without, with_monitor)  # the counters at every snapshot, and at the end
    # 4 training batches and 2 validation batches per epoch, two epochs.
    assert int(with_monitor[0]["net.0.calls"]) == 2 * (4 + 2)


class QATClassifier(Classifier):
    """A small conv net prepared for quantization-aware training: fake-quant observers that
    record in eval mode too."""

    def __init__(self) -> None:
        from torch.ao import quantization

        net = nn.Sequential(
            quantization.QuantStub(),
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 3),
            quantization.DeQuantStub(),
        ).train()
        net.qconfig = quantization.get_default_qat_qconfig("x86")
        quantization.prepare_qat(net, inplace=True)
        super().__init__(net)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.ao.quantization's notes
def test_quantization_aware_training_is_bitwise_the_same_with_and_without_the_monitor(tmp_path):
    without = fit_logging_buffers(tmp_path / "a", QATClassifier, with_monitor=False)
    observers = [key for key in without[0] if key.endswith(("min_val", "scale"))]
    assert observers  # the fake-quant observers' buffers are in the comparison
    assert_same_run(without, fit_logging_buffers(tmp_path / "b", QATClassifier, with_monitor=False))
    with_monitor = fit_logging_buffers(tmp_path / "c", QATClassifier, with_monitor=True)
    assert read_events(tmp_path / "c" / "tb" / "version_0").images
    assert_same_run(without, with_monitor)


@pytest.mark.parametrize("grouped", [True, False])
def test_buffers_of_several_dtypes_and_a_shared_buffer_come_back(grouped, tmp_path):
    from lightning_filterviz.capture.buffers import untouched_buffers

    shared = torch.zeros(3)
    first, second = nn.Module(), nn.Module()
    first.register_buffer("values", shared)
    second.register_buffer("values", shared)  # the same tensor, registered twice
    first.register_buffer("count", torch.zeros((), dtype=torch.int64))
    second.register_buffer("flags", torch.tensor([True, False]))
    model = nn.ModuleList([first, second])
    with untouched_buffers(model):
        shared.add_(1)
        first.count += 5
        second.flags.logical_not_()
        if not grouped:
            second.values = torch.ones(3)
    assert torch.equal(shared, torch.zeros(3)) and first.values is shared and second.values is shared
    assert int(first.count) == 0 and second.flags.tolist() == [True, False]
