"""Dataset examples in the validation loops people write: a model run several times per
batch (test-time augmentation), several validation dataloaders, a loader with a fixed
sampler order, non-finite pixels. Ground truth is planted: black images, one of which holds
a red 3x3 block, and a first conv whose filter 0 responds to red (R - G - B over 3x3, minus 1),
so that its top example is that image, peaking exactly at the block's centre (9 - 1 = 8),
its patch (the conv's 3x3 receptive field there) pure red.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import Classifier, FilterMonitor, count_hooks, in_the_outline, pl, trainer_kwargs

IMAGES, SIZE, BATCH = 16, 12, 4
RED = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
K = 3


def red_detector() -> nn.Sequential:
    """Filter 0 of ``net.0`` fires on red, filter 1 nowhere on black or red (all weights -1)."""
    net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    with torch.no_grad():
        net[0].weight[0] = torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, 3, 3)
        net[0].weight[1] = -1.0
        net[0].bias.copy_(torch.tensor([-1.0, -0.5]))
    return net


def black_images_with_a_red_block(index: int, top: int, left: int, brightness: float = 1.0) -> TensorDataset:
    """``IMAGES`` black images; image ``index`` holds a red 3x3 block at ``(top, left)``."""
    images = torch.zeros(IMAGES, 3, SIZE, SIZE)
    images[index, :, top : top + 3, left : left + 3] = brightness * RED
    return TensorDataset(images, torch.zeros(IMAGES, dtype=torch.long))


PLANTED_INDEX, PLANTED_TOP, PLANTED_LEFT = 9, 4, 1  # left of the middle: a flipped copy's block is elsewhere
PLANTED_CENTRE = (PLANTED_TOP + 1, PLANTED_LEFT + 1)


class Data(pl.LightningDataModule):
    def __init__(self, *val_sets: TensorDataset, as_dict: bool = False, sampler: Optional[list[int]] = None):
        super().__init__()
        self.val_sets = val_sets or (black_images_with_a_red_block(PLANTED_INDEX, PLANTED_TOP, PLANTED_LEFT),)
        self.as_dict, self.sampler = as_dict, sampler

    def train_dataloader(self) -> DataLoader:
        return DataLoader(black_images_with_a_red_block(0, 0, 0), batch_size=BATCH)

    def val_dataloader(self) -> Any:
        # Each loader with its own batch size, so that another loader's batch cannot pass for the first's.
        loaders = [
            DataLoader(data, batch_size=BATCH + number, sampler=self.sampler) for number, data in enumerate(self.val_sets)
        ]
        if self.as_dict:
            return {f"set{number}": loader for number, loader in enumerate(loaders)}
        return loaders[0] if len(loaders) == 1 else loaders


def fit(tmp_path: Path, model: Classifier, data: Data, epochs: int = 1) -> tuple[FilterMonitor, Path]:
    monitor = FilterMonitor(probe_size=4, examples_k=K, examples_layers=["net.0"], every_n_epochs=1)
    kwargs = trainer_kwargs(tmp_path, max_epochs=epochs, limit_train_batches=1)
    trainer = pl.Trainer(callbacks=[monitor], **kwargs)
    trainer.fit(model, datamodule=data)
    return monitor, Path(trainer.logger.log_dir)


def examples_file(log_dir: Path) -> dict[str, np.ndarray]:
    """The arrays of the latest validation run's examples history file."""
    path = sorted((log_dir / "filterviz" / "history").glob("validation_examples_*.npz"))[-1]
    with np.load(path, allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}


def assert_the_planted_block_is_filter_0s_only_example(monitor: FilterMonitor, log_dir: Path, index: Any) -> None:
    """Filter 0's examples: the planted image once, at the block's centre, value 8, its
    field pure red; nothing else fired (every other image is black: value 0), and the black
    images, all the same pixels, are one place: one example."""
    (first, *others) = monitor.dataset_examples["net.0"][0]
    assert first == (index, pytest.approx(8.0))
    assert [value for _, value in others] == [0.0]
    assert index is None or index not in [found for found, _ in others]  # the image once
    assert monitor.dataset_example_positions["net.0"][0][0] == PLANTED_CENTRE
    arrays = examples_file(log_dir)
    assert arrays["net.0/positions"][0, 0].tolist() == list(PLANTED_CENTRE)
    red = (in_the_outline(arrays["net.0/patches"][0, 0]) == [255, 0, 0]).all(axis=-1)
    assert red.all(), "the field is not where the block is"


class Plain(Classifier):
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        images, labels = batch
        self.log("val_loss", F.cross_entropy(self(images), labels), add_dataloader_idx=True)


class FlippedCopyAfterwards(Classifier):
    """Test-time augmentation as two forwards: the batch, then a mirrored copy of it."""

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images) + self(torch.flip(images, [3]))
        self.log("val_loss", F.cross_entropy(logits, labels))


class FlippedCopyJoined(Classifier):
    """Test-time augmentation as one forward of the batch and its mirrored copy joined."""

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        both = self(torch.cat([images, images.flip(3)]))
        self.log("val_loss", F.cross_entropy(both[: len(images)] + both[len(images) :], labels))


def warnings_about(caught: Any, text: str) -> int:
    return sum(text in str(warning.message) for warning in caught)


def test_a_plain_validation_step_finds_the_planted_block(tmp_path):
    """The sanity control of the ground truth the other tests build on."""
    monitor, log_dir = fit(tmp_path, Plain(red_detector(), lr=0.0), Data())
    assert_the_planted_block_is_filter_0s_only_example(monitor, log_dir, PLANTED_INDEX)


def test_a_mirrored_copy_run_after_the_batch_is_left_out_with_one_warning_per_fit(tmp_path):
    model = FlippedCopyAfterwards(red_detector(), lr=0.0)
    with pytest.warns(UserWarning, match="called again on the same batch") as caught:
        monitor, log_dir = fit(tmp_path, model, Data(), epochs=2)
    assert warnings_about(caught, "dataset examples cannot follow") == 1  # two validation runs, one warning
    # The copy's block, mirrored to column SIZE - 3 - PLANTED_LEFT, would have been a second
    # example of the same image, placed where the original image is black.
    assert_the_planted_block_is_filter_0s_only_example(monitor, log_dir, PLANTED_INDEX)


def test_the_batch_joined_with_its_mirrored_copy_gives_no_examples_and_one_warning(tmp_path):
    model = FlippedCopyJoined(red_detector(), lr=0.0)
    before = count_hooks(model)
    with pytest.warns(UserWarning, match="another number of images than the batch holds") as caught:
        monitor, log_dir = fit(tmp_path, model, Data(), epochs=2)
    assert warnings_about(caught, "dataset examples cannot follow") == 1
    assert warnings_about(caught, "collecting dataset examples failed") == 0
    assert monitor.dataset_examples == {} and count_hooks(model) == before
    assert not list((log_dir / "filterviz" / "history").glob("validation_examples_*.npz"))


@pytest.mark.parametrize("as_dict", [False, True], ids=["list", "dict"])
def test_with_two_validation_loaders_only_the_first_ones_samples_are_examples(tmp_path, as_dict):
    # The second set's block is brighter (value 17) and at another index: credited to the
    # first loader, it would be filter 0's top example.
    second = black_images_with_a_red_block(index=5, top=7, left=7, brightness=2.0)
    first = black_images_with_a_red_block(PLANTED_INDEX, PLANTED_TOP, PLANTED_LEFT)
    with pytest.warns(UserWarning, match=r"validation has 2 dataloaders; dataset examples come from the first only"):
        monitor, log_dir = fit(tmp_path, Plain(red_detector(), lr=0.0), Data(first, second, as_dict=as_dict))
    assert_the_planted_block_is_filter_0s_only_example(monitor, log_dir, PLANTED_INDEX)


def test_the_second_loaders_samples_are_left_out_also_when_it_comes_first_in_a_run(tmp_path):
    """The first loader holds the weaker block: the stronger one, in loader 1, never shows."""
    weaker_first = black_images_with_a_red_block(PLANTED_INDEX, PLANTED_TOP, PLANTED_LEFT)
    stronger_second = black_images_with_a_red_block(PLANTED_INDEX, 0, 8, brightness=3.0)
    with pytest.warns(UserWarning, match="dataloaders"):
        monitor, log_dir = fit(tmp_path, Plain(red_detector(), lr=0.0), Data(weaker_first, stronger_second))
    assert_the_planted_block_is_filter_0s_only_example(monitor, log_dir, PLANTED_INDEX)


def test_a_loader_reading_in_a_fixed_order_of_its_own_gives_dataset_indices(tmp_path):
    order = [(7 * position + 3) % IMAGES for position in range(IMAGES)]  # every index once, out of order
    assert sorted(order) == list(range(IMAGES)) and order.index(PLANTED_INDEX) != PLANTED_INDEX
    monitor, log_dir = fit(tmp_path, Plain(red_detector(), lr=0.0), Data(sampler=order))
    assert_the_planted_block_is_filter_0s_only_example(monitor, log_dir, PLANTED_INDEX)


def with_pixels(data: TensorDataset, pixels: dict[int, float]) -> TensorDataset:
    images, labels = data.tensors
    images = images.clone()
    for index, value in pixels.items():
        images[index, :, 6, 9] = value  # away from the planted block
    return TensorDataset(images, labels)


def test_non_finite_pixels_are_never_examples(tmp_path):
    planted = black_images_with_a_red_block(PLANTED_INDEX, PLANTED_TOP, PLANTED_LEFT)
    nan, inf = 12, 13  # out of the probe (images 0-3)
    data = Data(with_pixels(planted, {nan: float("nan"), inf: float("inf")}))
    monitor, log_dir = fit(tmp_path, Plain(red_detector(), lr=0.0), data)
    # Without the finite-only ranking, a NaN (ranked above every number) or +inf would be filter 0's top.
    assert_the_planted_block_is_filter_0s_only_example(monitor, log_dir, PLANTED_INDEX)
    for row in monitor.dataset_examples["net.0"]:
        assert all(np.isfinite(value) for _, value in row)
    # Filter 1 fires nowhere on finite pixels; -inf * -1 is +inf there, which must not count.
    assert all(value == 0.0 for _, value in monitor.dataset_examples["net.0"][1])
    values = examples_file(log_dir)["net.0/values"]
    assert (np.isfinite(values) | (values == -np.inf)).all()  # -inf: a slot left empty (fewer distinct places)
    assert np.isfinite(values[:, 0]).all()


def test_an_image_without_any_finite_response_is_no_example_at_all():
    """On the collector itself: an all-NaN image takes no slot; a finite one next to it does."""
    from lightning_filterviz.capture.activations import ActivationTap
    from lightning_filterviz.capture.dataset_examples import ExampleCollector
    from lightning_filterviz.core.records import ReceptiveField

    conv = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    tap = ActivationTap(conv, "relu", 0.0, float("inf"))
    collector = ExampleCollector({"conv": (tap, ReceptiveField(size=(1, 1), stride=(1, 1), offset=(0, 0)))}, 1, k=2)
    images = torch.zeros(2, 1, 4, 4)
    images[0] = float("nan")
    images[1, 0, 2, 3] = 0.5
    with collector.collecting(), torch.no_grad():
        collector.next_batch(images, torch.tensor([10, 11]))
        conv(images)
    found = collector.results()["conv"]
    assert found.as_lists() == [[(11, 0.5)]] and found.position_lists() == [[(2, 3)]]


def test_the_first_forward_decides_when_a_layer_is_called_again_and_patches_come_from_the_batch():
    """On the collector itself: per batch, a layer's first call only; the positions and
    patches from the batch's own images; a batch of another size collects nothing."""
    from lightning_filterviz.capture.activations import ActivationTap
    from lightning_filterviz.capture.dataset_examples import CALLED_AGAIN, OTHER_BATCH_SIZE, ExampleCollector
    from lightning_filterviz.core.records import ReceptiveField

    conv = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    collector = ExampleCollector(
        {"conv": (ActivationTap(conv, "relu", 0.0, float("inf")), ReceptiveField(size=(1, 1), stride=(1, 1), offset=(0, 0)))}, 1, k=1
    )
    images = torch.zeros(2, 1, 4, 4)
    images[1, 0, 1, 0] = 1.0
    with collector.collecting(), torch.no_grad():
        collector.next_batch(images, torch.tensor([20, 21]))
        conv(images)
        conv(3 * images.flip(3))  # stronger, mirrored: would win at (1, 3)
        assert collector.skipped == {CALLED_AGAIN}
        collector.next_batch(images, torch.tensor([30, 31]))
        conv(torch.cat([images, 5 * images]))
        assert collector.skipped == {CALLED_AGAIN, OTHER_BATCH_SIZE}
    found = collector.results()["conv"]  # every candidate: image 21, then 20 (nothing); the batch of 30, 31 not collected
    assert found.as_lists()[0][0] == (21, 1.0) and found.position_lists()[0][0] == (1, 0)
    assert [index for index, _ in found.as_lists()[0]] == [21, 20]
    # The context window covers all of the 4x4 image (NaN around it); the field is its pixel (1, 0).
    window = found.patches[0, 0, 0]
    assert torch.equal(window[window.isfinite()].reshape(4, 4), images[1, 0])
    top, left, height, width = found.boxes[0, 0].tolist()
    assert window[top, left] == 1.0 and (height, width) == (1, 1)
