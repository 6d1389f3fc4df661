"""What users' models and data do that the rest of the suite does not: parametrized weights,
augmented probe sources, batch hooks, arithmetic normalization, lazy and float64 models."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torch.nn.utils import parametrizations, parametrize
from torch.utils.data import DataLoader, Dataset, TensorDataset

from conftest import Classifier, FilterMonitor, RandomImages, pl, read_events, trainer_kwargs
from lightning_filterviz import FilterVisualizer, load_history
from lightning_filterviz.capture.probe_capture import capture_snapshot
from lightning_filterviz.capture.conv_layers import select_conv_layers
class NoisyScale(nn.Module):
    """A user-written parametrization that draws random numbers and updates a buffer in train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, weight: Tensor) -> Tensor:
        if self.training:
            self.calls += 1
            return weight * (1.0 + 0.01 * torch.randn(()))
        return weight


def parametrized_net(kind: str) -> nn.Sequential:
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )
    for conv in (net[0], net[2]):
        if kind == "spectral_norm":
            parametrizations.spectral_norm(conv)
        elif kind == "weight_norm":
            parametrizations.weight_norm(conv)
        elif kind == "orthogonal":
            parametrizations.orthogonal(conv)
        else:
            parametrize.register_parametrization(conv, "weight", NoisyScale())
    return net


class AugmentedImages(Dataset):
    """Random crops and flips drawn from torch's, Python's and NumPy's global generators."""

    def __init__(self, count: int = 32) -> None:
        generator = torch.Generator().manual_seed(3)
        self.images = torch.randn(count, 3, 14, 14, generator=generator)
        self.labels = torch.randint(0, 3, (count,), generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        top, left = torch.randint(0, 3, (2,)).tolist()
        image = self.images[index, :, top : top + 12, left : left + 12]
        if random.random() < 0.5:
            image = image.flip(-1)
        image = image * float(np.random.uniform(0.9, 1.1))
        return image, self.labels[index]


class AugmentedData(RandomImages):
    def __init__(self) -> None:
        super().__init__()
        self.train_set = AugmentedImages()  # type: ignore[assignment]


def train(tmp_path: Path, net_factory, data_factory, with_monitor: bool, **monitor_args) -> tuple[dict, dict]:
    pl.seed_everything(11)
    model = Classifier(net_factory(), lr=0.05)
    callbacks = [FilterMonitor(every_n_steps=2, **monitor_args)] if with_monitor else []
    trainer = pl.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, max_epochs=2))
    trainer.fit(model, datamodule=data_factory())
    if with_monitor:
        assert read_events(trainer.logger.log_dir).images  # the monitor did run
    return model.state_dict(), trainer.optimizers[0].state_dict()


def assert_bitwise_equal(first: tuple[dict, dict], second: tuple[dict, dict]) -> None:
    (state_a, optimizer_a), (state_b, optimizer_b) = first, second
    assert state_a.keys() == state_b.keys()
    for key in state_a:  # parameters and buffers: parametrizations' u, v and counters too
        assert torch.equal(state_a[key], state_b[key]), key
    for index, state in optimizer_a["state"].items():
        for name, value in state.items():
            assert torch.equal(optimizer_b["state"][index][name], value), (index, name)


@pytest.mark.parametrize("kind", ["spectral_norm", "weight_norm", "orthogonal", "user-written"])
def test_parametrized_weights_train_bitwise_the_same_with_the_monitor(kind, tmp_path):
    def factory() -> nn.Module:
        return parametrized_net(kind)

    without = train(tmp_path / "without", factory, RandomImages, with_monitor=False)
    with_monitor = train(tmp_path / "with", factory, RandomImages, with_monitor=True, response_layers=["net.0"])
    assert_bitwise_equal(without, with_monitor)


def test_a_probe_from_augmented_training_data_leaves_every_generator_as_it_was(tmp_path):
    def factory() -> nn.Module:
        return parametrized_net("weight_norm")

    without = train(tmp_path / "without", factory, AugmentedData, with_monitor=False)
    with_monitor = train(tmp_path / "with", factory, AugmentedData, with_monitor=True, probe_split="train")
    assert_bitwise_equal(without, with_monitor)


class NormalizingClassifier(Classifier):
    """Gets uint8 images and normalizes them on the device, where Lightning users do."""

    def on_after_batch_transfer(self, batch, dataloader_idx):
        images, labels = batch
        return (images.float() / 255.0 - 0.5) * 2.0, labels


def uint8_data() -> RandomImages:
    data = RandomImages()
    generator = torch.Generator().manual_seed(5)
    for dataset in (data.train_set, data.val_set):
        count = len(dataset)
        images = torch.randint(0, 256, (count, 3, 12, 12), dtype=torch.uint8, generator=generator)
        dataset.tensors = (images, dataset.tensors[1])
    return data


def test_the_probe_goes_through_the_modules_batch_hooks(tmp_path):
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    with torch.no_grad():
        net[0].weight.fill_(1.0 / 27)
        net[0].bias.copy_(torch.tensor([-1.01, 0.0, 0.2, -5.0]))  # channel 0: off on every input in [-1, 1]
    model = NormalizingClassifier(net, lr=0.0)
    data = uint8_data()
    monitor = FilterMonitor(every_n_steps=2)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(model, datamodule=data)
    assert monitor.dead_filters == {"net.0": [0, 3]}
    normalized = model.on_after_batch_transfer(monitor.probe, 0)[0]
    with torch.no_grad():
        reference = F.relu(net[0](normalized)).amax(dim=(0, 2, 3))
    history = load_history(Path(trainer.logger.log_dir) / "filterviz" / "history" / "step_00000000.npz")
    np.testing.assert_allclose(history["net.0/channel_max"], reference.numpy(), rtol=1e-6)


def test_frozen_batch_norm_backbones_keep_their_activations(tmp_path):
    from torchvision.ops import FrozenBatchNorm2d

    model = torchvision.models.resnet18(num_classes=4, norm_layer=FrozenBatchNorm2d).eval()
    for module in model.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.bias.uniform_(-0.2, 0.2)
    probe = torch.randn(2, 3, 32, 32)
    visualizer = FilterVisualizer(str(tmp_path))
    first = visualizer.snapshot(model, probe, 0)
    second = visualizer.snapshot(model, probe, 1)  # after the first pass: hooks on the FrozenBatchNorm2d taps
    with torch.no_grad():
        stem = F.relu(model.bn1(model.conv1(probe)))
    for snapshot in (first, second):
        layer = snapshot.layers["conv1"]
        assert layer.activation == "relu" and layer.through == ("mul", "add")
        torch.testing.assert_close(layer.channel_max, stem.amax(dim=(0, 2, 3)))
        torch.testing.assert_close(layer.channel_mean_abs, stem.mean(dim=(0, 2, 3)))
    with_activation = {name for name, layer in second.layers.items() if layer.activation}
    assert with_activation == {"conv1"} | {f"layer{stage}.{block}.conv1" for stage in range(1, 5) for block in (0, 1)}
    assert "relu (through mul, add)" in (tmp_path / "text.md").read_text()


def test_arithmetic_with_a_full_size_tensor_is_not_followed():
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x: Tensor) -> Tensor:
            return F.relu(self.conv(x) * 2.0 + x)  # the scale is followed; the residual sum is not

    model = Residual()
    snapshot = capture_snapshot(model, torch.randn(2, 3, 6, 6), select_conv_layers(model), 0)
    assert snapshot.layers["conv"].activation is None
    assert "add" in snapshot.layers["conv"].no_activation_reason


def test_a_scale_that_takes_only_its_dtype_from_the_data_is_still_a_constant():
    class LayerScale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
            self.gamma = nn.Parameter(torch.full((1, 4, 1, 1), 2.0))

        def forward(self, x: Tensor) -> Tensor:
            # type_as and zeros_like take the input's dtype and shape, not its values.
            return F.relu(self.bn(self.conv(x)) * self.gamma.type_as(x) + torch.zeros_like(x).sum())

    model = LayerScale().eval()
    probe = torch.randn(2, 3, 8, 8)
    snapshot = capture_snapshot(model, probe, select_conv_layers(model), 0)
    with torch.no_grad():
        expected = F.relu(model.bn(model.conv(probe)) * 2.0)
    assert snapshot.layers["conv"].activation == "relu"
    torch.testing.assert_close(snapshot.layers["conv"].channel_max, expected.amax(dim=(0, 2, 3)))


def test_lazy_modules_get_their_first_snapshot_after_the_first_forward(tmp_path):
    net = nn.Sequential(
        nn.LazyConv2d(6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)
    )
    monitor = FilterMonitor(every_n_steps=2)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(Classifier(net), datamodule=RandomImages())
    events = read_events(trainer.logger.log_dir)
    assert set(events.images["filterviz/weights/net.0"]) == {0, 2, 4}
    assert monitor.dead_filters.keys() == {"net.0"}


def test_a_float64_model_gets_snapshots(tmp_path):
    model = Classifier().double()
    data = RandomImages()
    for dataset in (data.train_set, data.val_set):
        dataset.tensors = (dataset.tensors[0].double(), dataset.tensors[1])
    monitor = FilterMonitor(every_n_steps=2)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1, precision="64-true"))
    trainer.fit(model, datamodule=data)
    assert set(read_events(trainer.logger.log_dir).images["filterviz/activations/net.0"]) == {0, 2, 4}


def test_a_float64_model_fed_float32_probes_gets_snapshots(tmp_path):
    model = conv_model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).double()
    visualizer = FilterVisualizer(str(tmp_path))
    snapshot = visualizer.snapshot(conv_model, torch.randn(2, 3, 8, 8), 0)
    assert snapshot.layers["0"].maps is not None and model[0].weight.dtype == torch.float64


class ReadyBatches(RandomImages):
    """Batches made by the dataset itself: DataLoader(batch_size=None)."""

    def train_dataloader(self) -> DataLoader:
        images, labels = self.train_set.tensors
        return DataLoader(list(zip(images.split(8), labels.split(8))), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        images, labels = self.val_set.tensors
        return DataLoader(list(zip(images.split(8), labels.split(8))), batch_size=None)


def test_loaders_of_ready_made_batches_give_a_probe(tmp_path):
    monitor = FilterMonitor(every_n_steps=2, probe_size=5)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(Classifier(), datamodule=ReadyBatches())
    images, _ = monitor.probe
    assert images.shape == (5, 3, 12, 12)
    assert torch.equal(images, ReadyBatches().val_set.tensors[0][:5])
    assert set(read_events(trainer.logger.log_dir).images["filterviz/weights/net.0"]) == {0, 2, 4}


class TwoInputNet(nn.Module):
    """An image and a per-sample side input (a conditioning scalar), as conditional models take."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, image: Tensor, side: Tensor) -> Tensor:
        return self.head(F.relu(self.conv(image) + 0.0).mean(dim=(2, 3)) * side[:, None])


class TwoInputClassifier(Classifier):
    def forward(self, image: Tensor, side: Tensor) -> Tensor:
        return self.net(image, side)

    def training_step(self, batch, batch_idx):
        image, side, labels = batch
        return F.cross_entropy(self(image, side), labels)

    def validation_step(self, batch, batch_idx):
        pass


class WithSideInput(RandomImages):
    def __init__(self) -> None:
        super().__init__()
        for name in ("train_set", "val_set"):
            images, labels = getattr(self, name).tensors
            setattr(self, name, TensorDataset(images, torch.rand(len(images)) + 0.5, labels))


def test_a_model_of_two_inputs_is_monitored_through_a_batch_key_function(tmp_path):
    monitor = FilterMonitor(
        every_n_steps=2,
        batch_key=lambda batch: (batch[0], batch[1]),
        forward_fn=lambda module, inputs: module(*inputs),
    )
    model = TwoInputClassifier(TwoInputNet(), lr=0.0)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(model, datamodule=WithSideInput())
    image, side, _ = monitor.probe
    with torch.no_grad():
        reference = F.relu(model.net.conv(image)).amax(dim=(0, 2, 3))
    history = load_history(Path(trainer.logger.log_dir) / "filterviz" / "history" / "step_00000000.npz")
    np.testing.assert_allclose(history["net.conv/channel_max"], reference.numpy(), rtol=1e-6)
    events = read_events(trainer.logger.log_dir)
    assert set(events.images["filterviz/activations/net.conv"]) == {0, 2, 4}
    assert events.images["filterviz/probe"][0].shape[0] > 12  # the image input is drawn


class LargerImages(RandomImages):
    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(9)
        for name in ("train_set", "val_set"):
            images, labels = getattr(self, name).tensors
            setattr(self, name, TensorDataset(torch.randn(len(images), 3, 16, 16, generator=generator), labels))


def filterviz_warnings(record) -> list[str]:
    return [str(warning.message) for warning in record if "filterviz" in str(warning.message)]


def test_a_monitor_reused_for_another_model_and_data_starts_afresh(tmp_path, recwarn):
    monitor = FilterMonitor(every_n_steps=2)
    first = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path / "first", max_epochs=1))
    first.fit(Classifier(lr=0.5), datamodule=RandomImages())
    second = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path / "second", max_epochs=1))
    second.fit(Classifier(lr=0.5), datamodule=LargerImages())
    assert monitor.probe[0].shape[-2:] == (16, 16)  # the new data's probe
    events = read_events(second.logger.log_dir)
    assert events.scalars["filterviz/drift/net.0"][0] == pytest.approx(0.0, abs=1e-6)  # from the new model's init
    assert set(events.images["filterviz/probe"]) == {0, 4} and set(events.texts["filterviz/layers"]) == {0}  # probe: start, end
    assert filterviz_warnings(recwarn) == []


def test_a_second_fit_of_the_same_model_continues_and_its_new_log_dir_is_introduced(tmp_path, recwarn):
    model, data = Classifier(lr=0.5), RandomImages()
    monitor = FilterMonitor(every_n_steps=2)
    first = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path / "first", max_epochs=1))
    first.fit(model, datamodule=data)
    probe = monitor.probe
    second = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path / "second", max_epochs=1))
    second.fit(model, datamodule=data)
    assert monitor.probe is probe
    events = read_events(second.logger.log_dir)
    drift_at_the_end_of_the_first_fit = read_events(first.logger.log_dir).scalars["filterviz/drift/net.0"][4]
    assert drift_at_the_end_of_the_first_fit > 0  # so the next line tells continuing from starting afresh
    assert events.scalars["filterviz/drift/net.0"][0] == pytest.approx(drift_at_the_end_of_the_first_fit)
    assert set(events.images["filterviz/probe"]) == {0, 4} and set(events.texts["filterviz/layers"]) == {0}  # probe: start, end
    assert filterviz_warnings(recwarn) == []


def test_the_users_hooks_fire_once_per_snapshot_as_in_an_eval_forward(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
    calls = {"forward": 0, "pre": 0, "backward": 0}
    model[0].register_forward_hook(lambda *args: calls.__setitem__("forward", calls["forward"] + 1))
    model[2].register_forward_pre_hook(lambda *args: calls.__setitem__("pre", calls["pre"] + 1))
    model[0].register_full_backward_hook(lambda *args: calls.__setitem__("backward", calls["backward"] + 1))
    visualizer = FilterVisualizer(str(tmp_path), response_layers=["0", "2"], views_every=1)
    for step in range(3):  # every snapshot draws the peak patches; the first measures receptive fields
        visualizer.snapshot(model, torch.randn(2, 3, 16, 16), step)
    assert calls == {"forward": 3, "pre": 3, "backward": 0}
    assert (tmp_path / "responses" / "2" / "step_00000000.png").is_file()  # the fields were measured
    assert len(model[0]._forward_hooks) == 1 and len(model[0]._backward_hooks) == 1  # and the hooks are back
