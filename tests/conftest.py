from __future__ import annotations

import contextlib
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import importlib

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

matplotlib.use("Agg")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))

# The suite runs once per Lightning package: FILTERVIZ_LIGHTNING=lightning (the default)
# or FILTERVIZ_LIGHTNING=pytorch_lightning.
LIGHTNING_PACKAGE = os.environ.get("FILTERVIZ_LIGHTNING", "lightning")
if LIGHTNING_PACKAGE == "lightning":
    pl = importlib.import_module("lightning.pytorch")
    from lightning_filterviz.lightning import FilterMonitor  # noqa: F401  (the tests import it from here)
elif LIGHTNING_PACKAGE == "pytorch_lightning":
    pl = importlib.import_module("pytorch_lightning")
    from lightning_filterviz.pl import FilterMonitor  # type: ignore[assignment]  # noqa: F401
else:
    raise ValueError(f"FILTERVIZ_LIGHTNING must be 'lightning' or 'pytorch_lightning', got {LIGHTNING_PACKAGE!r}")
LightningModule = pl.LightningModule
LightningDataModule = pl.LightningDataModule


def pytest_report_header() -> str:
    return f"lightning package under test: {LIGHTNING_PACKAGE} ({pl.__name__} {pl.__version__})"


# ---------------------------------------------------------------- models


def conv_bn_relu_stack(inplace: bool = False) -> nn.Sequential:
    """conv -> BN -> ReLU, conv -> ReLU (no BN), then a linear head."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=inplace),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


class FunctionalNet(nn.Module):
    """ReLUs called as functions in forward: no module to hook."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


def randomize_bn(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm's running statistics and affine parameters drawn at
    random, so that a normalization that is skipped or applied twice shows."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model


def resnet18_channels_last(device: str = "cpu", images: int = 4, size: int = 32) -> tuple[nn.Module, Tensor]:
    """torchvision's ResNet-18 (8 classes) in channels_last on ``device``, and a channels_last
    probe of ``images`` images of ``size`` pixels on the CPU (the engine moves it)."""
    import torchvision

    model = torchvision.models.resnet18(num_classes=8).to(device=device, memory_format=torch.channels_last)
    return model, torch.randn(images, 3, size, size).contiguous(memory_format=torch.channels_last)


class Classifier(LightningModule):
    """Wraps a network; optionally with a validation step."""

    def __init__(self, net: Optional[nn.Module] = None, lr: float = 0.05, dict_batches: bool = False) -> None:
        super().__init__()
        self.net = net if net is not None else conv_bn_relu_stack()
        self.lr = lr
        self.dict_batches = dict_batches

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _unpack(self, batch: Any) -> tuple[Tensor, Tensor]:
        return (batch["image"], batch["label"]) if self.dict_batches else (batch[0], batch[1])

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, labels = self._unpack(batch)
        return F.cross_entropy(self(images), labels)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, labels = self._unpack(batch)
        self.log("val_loss", F.cross_entropy(self(images), labels))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class NoValidation(Classifier):
    validation_step = None  # type: ignore[assignment]


class DictDataset(Dataset):
    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"image": self.images[index], "label": self.labels[index]}


def image_dataset(count: int, seed: int, size: int = 12, dict_items: bool = False) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, size, size, generator=generator)
    labels = torch.randint(0, 3, (count,), generator=generator)
    return DictDataset(images, labels) if dict_items else TensorDataset(images, labels)


class RandomImages(LightningDataModule):
    """Train and val sets of random 12x12 images that differ, so a probe's origin is checkable."""

    def __init__(self, train: int = 32, val: int = 16, batch_size: int = 8, dict_items: bool = False) -> None:
        super().__init__()
        self.train_set = image_dataset(train, seed=1, dict_items=dict_items)
        self.val_set = image_dataset(val, seed=2, dict_items=dict_items)
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


def trainer_kwargs(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        default_root_dir=str(tmp_path),
        logger=pl.loggers.TensorBoardLogger(str(tmp_path), name="tb"),
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    kwargs.update(overrides)
    return kwargs


def count_hooks(model: nn.Module) -> int:
    return sum(
        len(module._forward_hooks) + len(module._forward_pre_hooks) + len(module._backward_hooks)
        for module in model.modules()
    )


def function_modes_seen(module: nn.Module) -> list[list[str]]:
    """From now on, at each call of ``module``, the class names of the active
    ``TorchFunctionMode``s other than torch's own (``torch.device``'s, say): a mode of the
    monitor's, such as its tracer, sees every torch call of the forward, which is what
    training forwards must be spared. The list is appended to as ``module`` is called."""
    seen: list[list[str]] = []

    def hook(module: nn.Module, args: Any) -> None:
        modes = torch.overrides._get_current_function_mode_stack()
        seen.append([type(mode).__name__ for mode in modes if not type(mode).__module__.startswith("torch.")])

    module.register_forward_pre_hook(hook)
    return seen


# ---------------------------------------------------------------- event files


@dataclass
class Events:
    images: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    scalars: dict[str, dict[int, float]] = field(default_factory=dict)
    texts: dict[str, dict[int, str]] = field(default_factory=dict)


def read_events(log_dir: str | os.PathLike) -> Events:
    """Every image (decoded to HxWx3 uint8), scalar and text in the event files under log_dir."""
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    accumulator.Reload()
    events = Events()
    tags = accumulator.Tags()
    for tag in tags["images"]:
        events.images[tag] = {
            event.step: np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
            for event in accumulator.Images(tag)
        }
    for tag in tags["scalars"]:
        events.scalars[tag] = {event.step: event.value for event in accumulator.Scalars(tag)}
    for tag in tags["tensors"]:
        events.texts[tag] = {
            event.step: event.tensor_proto.string_val[0].decode() for event in accumulator.Tensors(tag)
        }
    return events


# ---------------------------------------------------------------- views


@contextlib.contextmanager
def registered(view: type) -> Iterator[None]:
    """Draw ``view`` (a View subclass) for the duration, through the public registry."""
    from lightning_filterviz.views.registry import register_view, unregister_view

    register_view(view)
    try:
        yield
    finally:
        unregister_view(view)


def failing_view(message: str) -> type:
    """A view whose drawing of every snapshot raises ``RuntimeError(message)``."""
    from lightning_filterviz.views.registry import View

    class FailingView(View):
        def at_snapshot(self, snapshot: Any, context: Any) -> None:
            raise RuntimeError(message)

    return FailingView


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def in_the_outline(picture: np.ndarray) -> np.ndarray:
    """``(n, 3)``: the pixels of a drawn dataset example inside the outline around its
    receptive field (the outline's own pixels left out, whatever its thickness)."""
    from lightning_filterviz.core.tiles import rgb_colour
    from lightning_filterviz.drawing.example_images import OUTLINE_COLOUR

    outline = (picture == rgb_colour(OUTLINE_COLOUR)).all(axis=-1)
    rows, columns = np.nonzero(outline)
    assert rows.size, "no outline"
    box = (slice(rows.min(), rows.max() + 1), slice(columns.min(), columns.max() + 1))
    inside = picture[box][~outline[box]]
    assert inside.size, "nothing inside the outline"
    return inside
