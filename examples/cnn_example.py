"""Models and data for the example: a small CNN (or ResNet-18) classifying image patches.

``PhotoPatches`` needs no download: it cuts patches out of the photos and textures that
scikit-image ships (a cat, coffee, an astronaut, a rocket, a stained tissue sample, brick,
grass and gravel). Each class is one source image; training patches come from the left
part of each image and validation patches from the right part, so validation pixels are
never seen in training. ``CIFAR10Data`` downloads CIFAR-10 through torchvision.
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from lightning.pytorch import LightningDataModule, LightningModule
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

PHOTO_CLASSES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "brick", "grass", "gravel")
# Left part of every image for training, the rest for validation.
TRAIN_FRACTION = 0.7


class ImageClassifier(LightningModule):
    """A CNN classifier; ``arch`` picks a small 3-conv network or torchvision's ResNet-18.

    Args:
        arch: ``"small_cnn"`` or ``"resnet18"`` (random init, no download).
        num_classes: number of classes.
        lr: AdamW's learning rate.
        weight_decay: AdamW's weight decay.
        first_layer_init_scale: scales the first conv's random init; a small init lets
            what the filters learn outweigh the noise they started from, so it shows.
    """

    def __init__(
        self,
        arch: Literal["small_cnn", "resnet18"] = "small_cnn",
        num_classes: int = 8,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        first_layer_init_scale: float = 1.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        if arch == "small_cnn":
            self.net = small_cnn(num_classes)
        else:
            self.net = torchvision.models.resnet18(num_classes=num_classes)
        if arch == "small_cnn" and first_layer_init_scale != 1.0:
            with torch.no_grad():
                self.net[0].weight.mul_(first_layer_init_scale)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        loss = F.cross_entropy(self(images), labels)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.log("val_loss", F.cross_entropy(logits, labels))
        self.log("val_acc", (logits.argmax(dim=1) == labels).float().mean(), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


def small_cnn(num_classes: int) -> nn.Sequential:
    """Four conv -> BN -> ReLU stages; 5x5 filters in the first layer so their patterns show."""
    return nn.Sequential(
        nn.Conv2d(3, 16, kernel_size=5, padding=2),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, kernel_size=3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, kernel_size=3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )


class PhotoPatches(LightningDataModule):
    """Patches cut from scikit-image's bundled photos; one class per photo, no download.

    Args:
        patch_size: side of the square patches in pixels.
        train_patches: training patches per class.
        val_patches: validation patches per class.
        batch_size: batch size of both loaders.
        seed: seed of the patch positions.
    """

    def __init__(
        self,
        patch_size: int = 64,
        train_patches: int = 500,
        val_patches: int = 100,
        batch_size: int = 64,
        seed: int = 0,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.train_patches = train_patches
        self.val_patches = val_patches
        self.batch_size = batch_size
        self.seed = seed
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        generator = np.random.default_rng(self.seed)
        photos = [_load_photo(name) for name in PHOTO_CLASSES]
        self.train_set = _patch_dataset(photos, self.train_patches, self.patch_size, generator, train=True)
        self.val_set = _patch_dataset(photos, self.val_patches, self.patch_size, generator, train=False)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


class CIFAR10Data(LightningDataModule):
    """CIFAR-10 through torchvision; downloads on first use (needs internet).

    Args:
        root: where the data set is stored.
        batch_size: batch size of both loaders.
    """

    def __init__(self, root: str = "data", batch_size: int = 128):
        super().__init__()
        self.root = root
        self.batch_size = batch_size
        self.transform = torchvision.transforms.Compose(
            [
                torchvision.transforms.ToTensor(),
                torchvision.transforms.Normalize((0.491, 0.482, 0.447), (0.247, 0.243, 0.262)),
            ]
        )

    def prepare_data(self) -> None:
        torchvision.datasets.CIFAR10(self.root, train=True, download=True)
        torchvision.datasets.CIFAR10(self.root, train=False, download=True)

    def setup(self, stage: Optional[str] = None) -> None:
        self.train_set = torchvision.datasets.CIFAR10(self.root, train=True, transform=self.transform)
        self.val_set = torchvision.datasets.CIFAR10(self.root, train=False, transform=self.transform)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


def _load_photo(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return image[..., :3].astype(np.float32) / 255.0


def _patch_dataset(
    photos: list[np.ndarray], per_class: int, size: int, generator: np.random.Generator, train: bool
) -> TensorDataset:
    patches, labels = [], []
    for label, photo in enumerate(photos):
        height, width = photo.shape[:2]
        split = int(width * TRAIN_FRACTION)
        low, high = (0, split - size) if train else (split, width - size)
        tops = generator.integers(0, height - size, per_class)
        lefts = generator.integers(low, high, per_class)
        patches.extend(photo[top : top + size, left : left + size] for top, left in zip(tops, lefts))
        labels.extend([label] * per_class)
    # Class by class in turn (0, 1, ..., 7, 0, 1, ...): the unshuffled validation loader's first
    # batch, where the probe is taken from, then holds a patch of every photo, not only of the first.
    in_turn = np.arange(len(patches)).reshape(len(photos), per_class).T.reshape(-1)
    patches, labels = [patches[index] for index in in_turn], [labels[index] for index in in_turn]
    images = torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).contiguous()
    # Standardize with fixed statistics so every patch set is scaled alike.
    images = (images - 0.5) / 0.25
    return TensorDataset(images, torch.tensor(labels))
