"""A fixed, short, deterministic training run with FilterMonitor, flattened into named arrays.

:func:`run_reference` is what ``tests/data/reference_run.npz`` holds (written by
``tests/make_reference.py``) and what ``tests/test_reference_run.py`` compares with it.
It reaches the package through its public names only (``lightning_filterviz``'s top-level
names, ``FilterMonitor`` as the suite imports it, the TensorBoard event files and the
history files), so that it runs unchanged however the modules inside are reorganized.

The model and the data are defined here rather than taken from conftest's shared helpers,
so that the reference moves only when the package's output does.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import Classifier, Events, FilterMonitor, pl, read_events, trainer_kwargs
from lightning_filterviz import load_history

__all__ = ["SEED", "run_reference"]

SEED = 1234
IMAGE_SIZE = 16
TRAIN_IMAGES, VAL_IMAGES, BATCH_SIZE = 24, 12, 6  # 4 optimizer steps per epoch
EPOCHS = 2
# Only the package's own tags: Lightning's (val_loss, epoch, hp_metric) are not what is under test.
TAG_PREFIX = "filterviz/"


def run_reference(tmp_dir: Path) -> dict[str, np.ndarray]:
    """Train the reference model under FilterMonitor in ``tmp_dir`` and return everything it
    wrote and holds, keyed ``image/<tag>/<step>`` (HxWx3 uint8), ``scalar/<tag>`` (values by
    step) with ``scalar_steps/<tag>``, ``text/<tag>/<step>``, ``history/<file name>/<array name>``
    and ``monitor/<attribute>/<layer>[/<part>]``."""
    monitor = reference_monitor()
    log_dir = _fit(Path(tmp_dir), monitor)
    return {
        **_flattened_events(read_events(log_dir)),
        **_flattened_history(log_dir / "filterviz" / "history"),
        **_flattened_attributes(monitor),
    }


# ---------------------------------------------------------------- the run


class ReferenceNet(nn.Module):
    """The three ways a conv meets its activation: through BN to a ReLU module, straight to
    a ReLU module, and to ``F.relu`` in ``forward`` (no module to hook)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(8, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.conv2(x))
        x = F.relu(self.conv3(x))
        return self.head(x.mean(dim=(2, 3)))


def reference_net() -> ReferenceNet:
    """The net with two of conv2's filters killed by a large negative bias, so that dead
    filters, their red frames and a non-empty dead-filter table are part of the reference."""
    net = ReferenceNet()
    with torch.no_grad():
        nn.init.constant_(net.conv2.bias[:2], -100.0)  # type: ignore[index]  # Conv2d has a bias by default
    return net


class ReferenceData(pl.LightningDataModule):
    """Random 16x16 images; the validation loader reads in order, so that the dataset
    examples carry dataset indices."""

    def __init__(self) -> None:
        super().__init__()
        self.train_set = _random_images(TRAIN_IMAGES, seed=11)
        self.val_set = _random_images(VAL_IMAGES, seed=12)

    def train_dataloader(self) -> DataLoader:
        # Its own generator: the order does not hang on what else drew from torch's global one.
        order = torch.Generator().manual_seed(SEED)
        return DataLoader(self.train_set, batch_size=BATCH_SIZE, shuffle=True, generator=order)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=BATCH_SIZE)


def _random_images(count: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    return TensorDataset(images, torch.randint(0, 3, (count,), generator=generator))


def reference_monitor() -> Any:
    """Snapshots at steps 0, 3 and 6 and, at the end of fit, one of the trained state at
    step 8; the views at the 1st and 2nd snapshot (steps 0 and 3) and with every view at the
    end, so that each view is drawn more than once; filmstrips, responses and examples of
    every conv, not only the first; dataset examples at both validation runs (steps 4 and 8)."""
    return FilterMonitor(
        every_n_steps=3,
        probe_size=3,
        max_images=2,
        views_every=2,
        dead_patience=2,
        filmstrip_layers=["net.*"],
        response_layers=["net.*"],
        examples_layers=["net.*"],
        examples_k=3,
    )


def _fit(tmp_dir: Path, monitor: Any) -> Path:
    """The run, on one CPU thread; returns the logger's directory."""
    with _one_thread():
        torch.manual_seed(SEED)  # the initial weights; nothing else here draws from the global generator
        model = Classifier(reference_net(), lr=1.0)
        kwargs = trainer_kwargs(tmp_dir, max_epochs=EPOCHS, check_val_every_n_epoch=1, log_every_n_steps=1)
        trainer = pl.Trainer(callbacks=[monitor], **kwargs)
        trainer.fit(model, datamodule=ReferenceData())
    return Path(trainer.logger.log_dir)


@contextmanager
def _one_thread() -> Iterator[None]:
    """torch's CPU kernels split their sums by thread count, and the last bits of the
    weights after a step differ with it (2 threads against 1: one ulp in a third of
    conv1's filters): one thread makes the run the same on any number of cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- flattening


def _flattened_events(events: Events) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for tag, by_step in _ours(events.images).items():
        arrays.update({f"image/{tag}/{step}": np.asarray(image, dtype=np.uint8) for step, image in by_step.items()})
    for tag, by_step in _ours(events.scalars).items():
        steps = sorted(by_step)
        arrays[f"scalar/{tag}"] = np.array([by_step[step] for step in steps], dtype=np.float64)
        arrays[f"scalar_steps/{tag}"] = np.array(steps, dtype=np.int64)
    for tag, by_step in _ours(events.texts).items():
        arrays.update({f"text/{tag}/{step}": np.array(text, dtype=np.str_) for step, text in by_step.items()})
    return arrays


def _ours(by_tag: dict[str, dict[int, Any]]) -> dict[str, dict[int, Any]]:
    return {tag: by_step for tag, by_step in by_tag.items() if tag.startswith(TAG_PREFIX)}


def _flattened_history(history_dir: Path) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for path in sorted(history_dir.glob("*.npz")):
        arrays.update({f"history/{path.name}/{name}": array for name, array in load_history(path).items()})
    return arrays


def _flattened_attributes(monitor: Any) -> dict[str, np.ndarray]:
    """The monitor's public attributes after fit: dead and dormant filters, dataset examples."""
    arrays: dict[str, np.ndarray] = {}
    for name, by_layer in (("dead_filters", monitor.dead_filters), ("dormant_filters", monitor.dormant_filters)):
        arrays.update(
            {f"monitor/{name}/{layer}": np.array(indices, dtype=np.int64) for layer, indices in by_layer.items()}
        )
    for layer, per_filter in monitor.dataset_examples.items():
        # Filters x examples_k; the validation loader reads in order, so no index is None.
        arrays[f"monitor/dataset_examples/{layer}/index"] = np.array(
            [[index for index, _ in examples] for examples in per_filter], dtype=np.int64
        )
        arrays[f"monitor/dataset_examples/{layer}/value"] = np.array(
            [[value for _, value in examples] for examples in per_filter], dtype=np.float64
        )
    return arrays
