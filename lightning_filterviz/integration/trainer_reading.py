"""What the callback reads off a Lightning Trainer: its data, log dir, loggers (where a fit
writes), strategy, precision and plan; and the fixed probe batch taken from its data.

Every function here takes the Trainer (or its strategy) as an untyped object and imports no
Lightning package, so that both flavours, ``lightning.pytorch`` and ``pytorch_lightning``,
share them (see :mod:`lightning_filterviz.integration.callback`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_filterviz.core.history import history_dir_of, point_to_history
from lightning_filterviz.integration.probe_storage import is_stored_probe, rebuilt_probe, stored_probe
from lightning_filterviz.publishing.sinks.registry import sinks_for_loggers
from lightning_filterviz.capture.probe import (
    ImageInput,
    check_given_probe,
    finite_on_host,
    given_probe,
    model_input,
    pin_memory,
    probe_from_loader,
    to_cpu,
)
from lightning_filterviz.capture.rng import initialized_cuda_devices, untouched_random_state
from lightning_filterviz.core.settings import check_positive_int
from lightning_filterviz.publishing.sinks.group import SinkGroup
from lightning_filterviz.publishing.sinks.tensorboard import TensorBoardSink

__all__ = [
    "FixedProbe",
    "PROBE_SPLITS",
    "SHARDED_STRATEGIES",
    "TENSORBOARD_IMAGE_SAMPLES",
    "data_source",
    "first_loader",
    "fit_destination",
    "input_converter",
    "is_sharded",
    "log_dir_of",
    "planned_snapshots",
    "point_other_loggers_to",
    "probe_from_data",
    "validation_loader",
    "validation_loader_in_use",
    "warn_about_tensorboard_sampling",
]

# Where a probe taken from the fit's data comes from (see probe_from_data).
PROBE_SPLITS = ("val", "train")
# Strategies whose ranks each hold a shard of the weights.
SHARDED_STRATEGIES = frozenset({"FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy"})
# TensorBoard keeps about this many images per tag unless told otherwise.
TENSORBOARD_IMAGE_SAMPLES = 10


class FixedProbe:
    """The probe batch every snapshot of a fit runs: given, or taken once from the fit's data.

    Kept on the CPU; on a GPU, pinned once so that each snapshot's copy to the device is
    asynchronous.

    Args:
        given: a batch passed by the user (its first ``size`` samples are kept, once
            :meth:`choose` knows the model), or ``None``.
        size: the most samples the probe holds.
        split: where a probe taken from the data comes from (see :func:`probe_from_data`).

    Raises:
        ValueError: if ``size`` is not a positive integer, ``split`` not one of
            :data:`PROBE_SPLITS`, or ``given`` holds no sample (see
            :func:`~lightning_filterviz.capture.probe.check_given_probe`).
    """

    def __init__(self, given: Optional[Any], size: int, split: str) -> None:
        size = check_positive_int("probe_size", size)
        if split not in PROBE_SPLITS:
            raise ValueError(f"`probe_split` must be one of {PROBE_SPLITS}, got {split!r}.")
        check_given_probe(given)
        self.batch: Optional[Any] = to_cpu(given) if given is not None else None
        # A given batch is cut to size by choose(): whether a list in it is a list of images
        # (a sample each) or of fields (a batch each) takes the model's first conv to tell.
        self._uncut = given is not None
        self.size = size
        self.split = split
        self._given = given is not None
        self._pinned: Optional[Any] = None
        self._stored: Optional[tuple[Any, dict[str, Any]]] = None  # the batch and its stored form
        self._finite: Optional[tuple[Any, bool]] = None  # the batch and whether its model input is finite

    def choose(self, trainer: Any, images: Optional[ImageInput] = None, batch_key: Any = None) -> Any:
        """The probe, taken from the fit's data if there is none yet; a given one cut to
        ``size`` samples the first time (a list of same-size images stacked, see
        :func:`~lightning_filterviz.capture.probe.given_probe`).

        Args:
            trainer: the fit's Trainer.
            images: what the model's first conv takes, to tell a list of images from a
                batch of fields; ``None``: every list is a batch of fields.
            batch_key: the monitor's ``batch_key``.

        Raises:
            ValueError: if the fit has no data to take a probe from, or a given list of
                images cannot be stacked.
        """
        if self.batch is None:
            self.batch = probe_from_data(trainer, self.split, self.size, images)
        elif self._uncut:
            self.batch = given_probe(self.batch, self.size, images, batch_key)
        self._uncut = False
        return self.batch

    def stored(self) -> Optional[dict[str, Any]]:
        """The probe as a checkpoint holds it: plain containers and tensors, stored compactly
        and losslessly (see :mod:`~lightning_filterviz.integration.probe_storage`); ``None``
        before one is chosen. Made once per probe."""
        if self.batch is None:
            return None
        if self._stored is None or self._stored[0] is not self.batch:
            self._stored = (self.batch, stored_probe(self.batch))
        return self._stored[1]

    def finite(self, batch_key: Any) -> bool:
        """Whether the probe's model input holds no NaN or Inf, checked once per probe in host
        memory (the GPU copy each snapshot runs is never read on the host). What the
        LightningModule's batch-transfer hooks make of it is not checked: a NaN made there
        leaves the channels it reaches with NaN statistics (not judged)."""
        if self.batch is None:
            return False
        if self._finite is None or self._finite[0] is not self.batch:
            try:
                finite = bool(finite_on_host(model_input(self.batch, batch_key)))
            except (KeyError, IndexError, TypeError, ValueError):
                finite = False  # not known: the snapshot itself says what is wrong with batch_key
            self._finite = (self.batch, finite)
        return self._finite[1]

    def restore(self, saved: Any) -> None:
        """Use the probe saved in a checkpoint (as :meth:`stored` gave it, or an older
        version's batch as it was) from now on."""
        self.batch = rebuilt_probe(saved) if is_stored_probe(saved) else saved
        self._uncut = False  # as the snapshots before the checkpoint ran it
        self._pinned = None

    def forget(self) -> None:
        """Forget a probe taken from the data, so that the next fit takes its own; a given one stays."""
        if not self._given:
            self.batch = None
        self._pinned = None

    def on_device(self, trainer: Any) -> Any:
        """The probe as the model sees a training batch: through the LightningModule's
        ``on_before_batch_transfer``, ``transfer_batch_to_device`` and ``on_after_batch_transfer``
        (where users normalize, cast or augment), with every random generator left as it was."""
        probe = self.batch
        if trainer.strategy.root_device.type == "cuda":
            if self._pinned is None:
                self._pinned = pin_memory(probe)
            probe = self._pinned
        with untouched_random_state(initialized_cuda_devices()):
            return trainer.strategy.batch_to_device(probe)


def probe_from_data(trainer: Any, probe_split: str, probe_size: int, images: Optional[ImageInput] = None) -> Any:
    """The first ``probe_size`` samples of the fit's ``probe_split`` (``"val"``, falling back
    to ``"train"`` when there is no validation data, or ``"train"``), on the CPU (``images``:
    see :func:`~lightning_filterviz.capture.probe.probe_from_loader`).

    Raises:
        ValueError: if the fit has no DataLoader to take them from.
    """
    loader = validation_loader(trainer) if probe_split == "val" else None
    if loader is None:
        if probe_split == "val":
            rank_zero_info("filterviz: no validation data; the probe batch comes from the training set.")
        loader = first_loader(trainer.train_dataloader)
    if loader is None:
        raise ValueError("FilterMonitor found no DataLoader to take a probe batch from; pass `probe=`.")
    batch, count = probe_from_loader(loader, probe_size, images)
    if count < probe_size:
        rank_zero_warn(f"filterviz: the dataset has only {count} samples; the probe batch holds {count}.")
    return batch


def data_source(trainer: Any) -> Any:
    """What the fit's data comes from: its datamodule, else its training dataset."""
    if trainer.datamodule is not None:
        return trainer.datamodule
    loader = first_loader(trainer.train_dataloader)
    return loader.dataset if loader is not None else None


def validation_loader(trainer: Any) -> Optional[DataLoader]:
    """The fit's first validation loader, built ahead of the first validation if need be."""
    val_loop = trainer.fit_loop.epoch_loop.val_loop
    # Building the loader here is what the first validation would do anyway; it reads no batch.
    val_loop.setup_data()
    return first_loader(trainer.val_dataloaders)


def validation_loader_in_use(trainer: Any) -> Optional[DataLoader]:
    """The first loader of the validation run now under way."""
    return first_loader(trainer.val_dataloaders)


def first_loader(loaders: Any) -> Optional[DataLoader]:
    """The first DataLoader in a loader, or in a list, tuple or dict of them (nested), else ``None``."""
    if isinstance(loaders, DataLoader):
        return loaders
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        for loader in loaders:
            found = first_loader(loader)
            if found is not None:
                return found
    return None


def log_dir_of(trainer: Any) -> str:
    """The run's log dir; on every rank, as ``Trainer.log_dir`` is a collective."""
    return trainer.log_dir or trainer.default_root_dir


def fit_destination(
    trainer: Any, log_dir: str, save_history: bool, every_n_epochs: Optional[int], every_n_steps: Optional[int]
) -> tuple[SinkGroup, Optional[Path]]:
    """Where this fit's snapshots go: a sink for each of the trainer's loggers (see
    :func:`~lightning_filterviz.publishing.sinks.registry.sinks_for_loggers`) and, with ``save_history``,
    the history directory ``<output dir>/filterviz/history`` in the directory of the first
    TensorBoard logger (else the CSV logger's, else ``log_dir``), to which a note in the other
    loggers' directories points. Warns when TensorBoard would show only part of the planned
    snapshots."""
    sink, output_dir = sinks_for_loggers(trainer.loggers, log_dir)
    history_dir = history_dir_of(output_dir) if save_history else None
    if history_dir is not None:
        point_other_loggers_to(trainer, output_dir, history_dir)
    if any(isinstance(each, TensorBoardSink) for each in sink.sinks.values()):
        warn_about_tensorboard_sampling(trainer, every_n_epochs, every_n_steps)
    return sink, history_dir


def point_other_loggers_to(trainer: Any, output_dir: str, history_dir: Any) -> None:
    """One run's outputs lie together; the other loggers' directories get a note saying where."""
    for logger in trainer.loggers:
        other = getattr(logger, "log_dir", None)
        if other and os.path.abspath(other) != os.path.abspath(output_dir):
            point_to_history(other, history_dir)


def is_sharded(strategy: Any) -> bool:
    """Whether the strategy's ranks each hold a shard of the weights."""
    return any(cls.__name__ in SHARDED_STRATEGIES for cls in type(strategy).__mro__)


def input_converter(trainer: Any) -> Optional[Callable[[Tensor], Tensor]]:
    """The precision plugin's input conversion, for floating-point tensors only."""
    plugin = trainer.precision_plugin

    def convert(tensor: Tensor) -> Tensor:
        return plugin.convert_input(tensor) if torch.is_floating_point(tensor) else tensor

    return convert


def warn_about_tensorboard_sampling(trainer: Any, every_n_epochs: Optional[int], every_n_steps: Optional[int]) -> None:
    """Warn when more snapshots are planned than TensorBoard shows per tag by default."""
    planned = planned_snapshots(trainer, every_n_epochs, every_n_steps)
    if planned is None or planned > TENSORBOARD_IMAGE_SAMPLES:
        count = "an open-ended number of" if planned is None else f"about {planned}"
        rank_zero_warn(
            f"filterviz: {count} snapshots are planned, but TensorBoard shows only "
            f"{TENSORBOARD_IMAGE_SAMPLES} images per tag by default. Start it with "
            "`tensorboard --logdir <dir> --samples_per_plugin images=1000` to scroll the whole history."
        )


def planned_snapshots(trainer: Any, every_n_epochs: Optional[int], every_n_steps: Optional[int]) -> Optional[int]:
    """About how many snapshots the fit will take at this cadence; ``None`` when it is open-ended."""
    if every_n_steps is not None:
        total_steps = trainer.estimated_stepping_batches
        return None if total_steps == float("inf") else 1 + int(total_steps) // every_n_steps
    max_epochs = trainer.max_epochs
    if max_epochs is None or max_epochs < 0:
        # Bounded by max_steps alone: the epochs that many optimizer steps take.
        total_steps, batches = trainer.estimated_stepping_batches, trainer.num_training_batches
        if total_steps == float("inf") or not batches or batches == float("inf"):
            return None
        steps_per_epoch = max(1, int(batches) // max(1, trainer.accumulate_grad_batches))
        max_epochs = math.ceil(int(total_steps) / steps_per_epoch)
    return 1 + max_epochs // (every_n_epochs or 1)
