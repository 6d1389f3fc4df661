"""Probes and batches that are not a batch of images fail at setup, before any training step,
with a message naming the argument and what to pass; the ones that are follow as a batch would.

Each failing case asserts that no training step ran; each working case plants a dead filter
(weights zero, bias -1) and finds exactly it, which it can only do when the snapshot ran on
the images."""

from __future__ import annotations

from typing import Any, Optional

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import Classifier, FilterMonitor, LightningDataModule, RandomImages, conv_bn_relu_stack, pl, trainer_kwargs

PLANTED = ("net.3", 5)  # conv_bn_relu_stack's second conv: a ReLU straight after it
# What the monitor finds dead on it: the planted filter, and nothing in the first conv.
DEAD = {"net.0": [], "net.3": [5]}


class CountingClassifier(Classifier):
    """conv_bn_relu_stack with one planted dead filter, counting its training steps; batches
    may be lists of images (stacked here, as a training step for such a collate_fn would)."""

    def __init__(self, net: Optional[nn.Module] = None, images_at: int = 0) -> None:
        super().__init__(net if net is not None else planted(conv_bn_relu_stack(), PLANTED), lr=0.0)
        self.images_at = images_at
        self.training_steps = 0

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self.training_steps += 1
        if isinstance(batch, list) and all(isinstance(item, Tensor) and item.dim() == 3 for item in batch):
            images, labels = torch.stack(batch), torch.zeros(len(batch), dtype=torch.long, device=batch[0].device)
        else:
            images, labels = batch[self.images_at], batch[1 - self.images_at]
        return F.cross_entropy(self(images), labels)

    validation_step = None  # type: ignore[assignment]


def planted(net: nn.Module, where: tuple[str, int]) -> nn.Module:
    """``net`` with filter ``where`` of a conv exactly dead: zero weights, bias -1."""
    name, index = where
    conv = net.get_submodule(name.split(".", 1)[1]) if name.startswith("net.") else net.get_submodule(name)
    with torch.no_grad():
        conv.weight[index].zero_()
        conv.bias[index] = -1.0
    return net


def fit(tmp_path, monitor: FilterMonitor, model: CountingClassifier, data: Any) -> pl.Trainer:
    kwargs = trainer_kwargs(tmp_path, max_steps=2, limit_val_batches=0)
    trainer = pl.Trainer(callbacks=[monitor], **kwargs)
    if isinstance(data, LightningDataModule):
        trainer.fit(model, datamodule=data)
    else:
        trainer.fit(model, train_dataloaders=data)
    return trainer


def refused_before_training(tmp_path, monitor: FilterMonitor, data: Any, model: Optional[CountingClassifier] = None):
    """The ValueError the fit raised; asserts that no training step ran."""
    model = model if model is not None else CountingClassifier()
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_steps=2, limit_val_batches=0))
    with pytest.raises(ValueError) as raised:
        if isinstance(data, LightningDataModule):
            trainer.fit(model, datamodule=data)
        else:
            trainer.fit(model, train_dataloaders=data)
    assert model.training_steps == 0 and trainer.global_step == 0
    return str(raised.value)


def filterviz_warnings(record) -> list[str]:
    return [str(warning.message) for warning in record if "filterviz" in str(warning.message)]


# ---------------------------------------------------------------- an unbatched probe


@pytest.mark.parametrize("channels", [1, 3])
def test_a_single_image_as_probe_fails_at_setup(channels, tmp_path):
    net = conv_bn_relu_stack()
    net[0] = nn.Conv2d(channels, 6, 3, padding=1)
    monitor = FilterMonitor(probe=torch.randn(channels, 12, 12), every_n_steps=100)
    data = RandomImages()
    message = refused_before_training(tmp_path, monitor, data, CountingClassifier(planted(net, PLANTED)))
    assert f"shape ({channels}, 12, 12): a single image" in message
    assert "`probe`" in message and "probe.unsqueeze(0)" in message


def test_a_batch_of_single_channel_images_without_their_channel_is_not_mistaken_for_one_image(tmp_path, recwarn):
    """A model that adds the channel itself takes (N, H, W): its conv takes 1 channel, the
    probe has 4 images: a batch, followed as one (the planted filter is found dead)."""

    class AddsChannel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.head = nn.Linear(4, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(torch.relu(self.conv(x.unsqueeze(1))).mean(dim=(2, 3)))

    images = torch.randn(16, 12, 12)
    loader = DataLoader(TensorDataset(images, torch.randint(0, 3, (16,))), batch_size=8)
    monitor = FilterMonitor(probe=images[:4], every_n_steps=100, dead_patience=1)
    model = CountingClassifier(planted(AddsChannel(), ("conv", 2)))
    fit(tmp_path, monitor, model, loader)
    assert model.training_steps == 2
    assert monitor.dead_filters == {"net.conv": [2]}
    assert filterviz_warnings(recwarn) == []


def test_a_probe_without_samples_is_refused_at_construction():
    for probe, shown in [(torch.tensor(1.0), r"shape \(\)"), (torch.zeros(0, 3, 8, 8), r"shape \(0, 3, 8, 8\)")]:
        with pytest.raises(ValueError, match=rf"`probe` has {shown}, so it holds no sample: pass a batch"):
            FilterMonitor(probe=probe)
    with pytest.raises(ValueError, match=r"`probe` holds no tensor \(got list\): pass a batch of images"):
        FilterMonitor(probe=[])


# ---------------------------------------------------------------- a list of images as probe


def test_a_list_of_same_size_images_as_probe_is_stacked_into_a_batch(tmp_path, recwarn):
    images = [torch.randn(3, 12, 12) for _ in range(5)]
    # probe_size 2 < 3 channels: cutting each image's first rows would keep 2 of its channels.
    monitor = FilterMonitor(probe=images, probe_size=2, every_n_steps=100, dead_patience=1)
    model = CountingClassifier()
    fit(tmp_path, monitor, model, RandomImages())
    assert torch.equal(monitor.probe, torch.stack(images[:2]))
    assert model.training_steps == 2 and monitor.dead_filters == DEAD
    assert filterviz_warnings(recwarn) == []


def test_a_list_of_images_of_different_sizes_as_probe_fails_at_setup(tmp_path):
    monitor = FilterMonitor(probe=[torch.randn(3, 12, 12), torch.randn(3, 16, 16)], every_n_steps=100)
    message = refused_before_training(tmp_path, monitor, RandomImages())
    assert "`probe` is a list of 2 images of different sizes" in message
    assert "Resize them to one size" in message and "batch_key=lambda batch: batch" in message


def test_a_batch_of_two_image_fields_is_not_taken_for_a_list_of_images(tmp_path):
    """(images, labels) given as a list: a batch of fields, cut to probe_size along each."""
    images, labels = torch.randn(6, 3, 12, 12), torch.randint(0, 3, (6,))
    monitor = FilterMonitor(probe=[images, labels], probe_size=4, every_n_steps=100)
    fit(tmp_path, monitor, CountingClassifier(), RandomImages())
    assert torch.equal(monitor.probe[0], images[:4]) and torch.equal(monitor.probe[1], labels[:4])


# ---------------------------------------------------------------- batch_key


def test_a_negative_batch_key_indexes_as_python_does(tmp_path, recwarn):
    """(labels, images) batches: batch_key=-1 is the images, and the snapshot runs on them."""
    data = RandomImages()
    images, labels = data.train_set.tensors
    loader = DataLoader(TensorDataset(labels, images), batch_size=8)
    monitor = FilterMonitor(batch_key=-1, every_n_steps=100, dead_patience=1, probe_split="train")
    model = CountingClassifier(images_at=1)
    fit(tmp_path, monitor, model, loader)
    assert torch.equal(monitor.probe[-1], images[:8])
    assert model.training_steps == 2 and monitor.dead_filters == DEAD
    assert filterviz_warnings(recwarn) == []


def test_a_negative_batch_key_that_picks_the_labels_fails_at_setup(tmp_path):
    monitor = FilterMonitor(batch_key=-1, every_n_steps=100)
    message = refused_before_training(tmp_path, monitor, RandomImages())
    assert "shape (8,) (torch.int64): at most one value per sample" in message
    assert "`batch_key=-1` takes element 1 of the 2-element batch" in message
    assert "Set `batch_key` to the index of the images, e.g. batch_key=0" in message


def test_an_int_batch_key_into_a_tensor_probe_fails_at_setup(tmp_path):
    monitor = FilterMonitor(probe=torch.randn(4, 3, 12, 12), batch_key=-1, every_n_steps=100)
    message = refused_before_training(tmp_path, monitor, RandomImages())
    assert "a single image" in message and "`batch_key=-1` indexes the tensor probe" in message
    assert "leave batch_key=None" in message


# ---------------------------------------------------------------- a collate_fn that returns a list of images


def images_only(items: list) -> list[Tensor]:
    return [image for image, _ in items]


def list_loader(count: int) -> DataLoader:
    images, labels = RandomImages(train=count).train_set.tensors
    return DataLoader(TensorDataset(images, labels), batch_size=4, collate_fn=images_only)


def test_a_list_collate_with_the_default_batch_key_fails_at_setup_saying_what_to_set(tmp_path):
    message = refused_before_training(tmp_path, FilterMonitor(every_n_steps=100), list_loader(16))
    assert "The probe batch is a list of 8 images" in message
    assert "batch_key=torch.stack" in message and "batch_key=lambda batch: batch" in message


@pytest.mark.parametrize(("count", "warned"), [(16, None), (5, 5)])
def test_a_list_collate_probe_counts_its_samples(count, warned, tmp_path, recwarn):
    """The probe holds the first probe_size images, each whole (3 channels); the size warning
    counts samples (5 of them), not channels (3) or the list."""
    loader = list_loader(count)
    monitor = FilterMonitor(batch_key=torch.stack, every_n_steps=100, dead_patience=1, probe_split="train")
    model = CountingClassifier()
    fit(tmp_path, monitor, model, loader)
    expected = min(count, 8)
    assert isinstance(monitor.probe, list) and len(monitor.probe) == expected
    assert torch.equal(torch.stack(monitor.probe), loader.dataset.tensors[0][:expected])
    assert monitor.dead_filters == DEAD
    sizes = [text for text in filterviz_warnings(recwarn) if "the dataset has only" in text]
    assert sizes == ([] if warned is None else [f"filterviz: the dataset has only {warned} samples; the probe batch holds {warned}."])
