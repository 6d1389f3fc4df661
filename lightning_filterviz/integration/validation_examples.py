"""Dataset examples during ``fit``: each validation run collected, the ranks' shares gathered.

:class:`ValidationExamples` is the callback's side of dataset_examples.py: it hooks the
engine's collector in for one validation run, tells it each batch's dataset indices, and
at the end gathers every rank's examples on the device for rank 0 to publish (its writer
thread merges them, each sample once: :func:`~lightning_filterviz.capture.dataset_examples.merge_ranks`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from typing import TYPE_CHECKING, Any, Iterator, Optional

import torch
from lightning_utilities.core.rank_zero import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_filterviz.capture.dataset_examples import ExampleCollector
from lightning_filterviz.core.records import NO_INDEX, LayerExamples
from lightning_filterviz.capture.probe import BatchKey, model_input

if TYPE_CHECKING:
    from lightning_filterviz.engine.visualizer import FilterVisualizer

__all__ = ["ValidationExamples", "dataset_index_map", "gathered_examples", "validation_loaders"]


class ValidationExamples:
    """The dataset examples of each validation run of ``fit`` (not the sanity check): the
    engine's collector hooked in at the start, fed every batch with the dataset index of
    its samples (counted from the loader's order, see :func:`dataset_index_map`), and at
    the end every rank's examples gathered and published by rank 0.

    What is collected, so that each example is a place in one known sample:

    - Only the first validation dataloader's batches (``dataloader_idx`` 0); with several,
      a warning says so once per fit, and the dataset indices are those of its dataset.
    - Of each batch, only each conv's first forward, and only when it takes as many images
      as the batch holds (see :mod:`~lightning_filterviz.capture.dataset_examples`): a step
      that runs a flipped copy after the batch gives the batch's examples, one that runs the
      batch concatenated with copies gives none. A warning says once per fit what was skipped.
    """

    def __init__(self) -> None:
        self._hooks = contextlib.ExitStack()
        self._collector: Optional[ExampleCollector] = None
        self._index_map: Optional[Tensor] = None
        self._seen = 0
        self._warnings = _OncePerFit()

    def __getstate__(self) -> dict[str, Any]:
        return {}  # launchers that spawn processes pickle the callback between runs

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    @property
    def active(self) -> bool:
        return self._collector is not None

    def start_run(self, engine: FilterVisualizer, trainer: Any, model: Any) -> None:
        """At the start of a validation run: collect, if it is one of ``fit``'s and the
        engine has layers to collect examples of. A failure costs only this run's examples."""
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._warnings.fit_of(trainer)
        with self._failure_warned():
            collector = engine.dataset_examples_pass(model)
            if collector is not None:
                loaders = validation_loaders(trainer.val_dataloaders)
                if len(loaders) > 1:
                    self._warnings.warn(
                        "loaders",
                        f"filterviz: validation has {len(loaders)} dataloaders; dataset examples come from the "
                        "first only (dataloader_idx 0), with indices into its dataset. Put the loader whose "
                        "examples you want first.",
                    )
                first = loaders[0] if loaders and isinstance(loaders[0], DataLoader) else None
                self.start(collector, first, model.device)

    def end_run(self, engine: FilterVisualizer, trainer: Any, model: Any) -> None:
        """At the end of a validation run: gather every rank's examples (a collective) and
        publish them on rank 0. A failure costs only this run's examples."""
        with self._failure_warned():
            self._publish(engine, trainer, model)

    @contextlib.contextmanager
    def _failure_warned(self) -> Iterator[None]:
        try:
            yield
        except Exception as error:  # monitoring must never end a training run
            self.stop()
            rank_zero_warn(f"filterviz: collecting dataset examples failed: {type(error).__name__}: {error}")

    def _publish(self, engine: FilterVisualizer, trainer: Any, model: Any) -> None:
        collector = self.stop()
        if collector is None:
            return
        self._say_what_was_skipped(collector)
        examples, gathered = collector.results(), trainer.world_size > 1
        if not gathered and not collector.collected_any:
            return  # nothing of this run could be collected: the previous run's examples stay
        if gathered:
            examples = gathered_examples(examples, trainer.strategy)
        if trainer.is_global_zero:
            engine.publish_dataset_examples(examples, model, trainer.global_step, gathered=gathered)

    def _say_what_was_skipped(self, collector: ExampleCollector) -> None:
        if not collector.skipped:
            return
        self._warnings.warn(
            "skipped",
            "filterviz: the validation step ran watched convs in ways dataset examples cannot follow ("
            + "; ".join(sorted(collector.skipped))
            + "). Examples come only from each conv's first forward on a batch, when it takes the batch's "
            "images as they are: run the batch itself first (e.g. `self(x) + self(x.flip(3))`); a batch "
            "concatenated with copies (`self(torch.cat([x, x.flip(3)]))`) gives no examples.",
        )

    def start(self, collector: ExampleCollector, loader: Optional[DataLoader], device: torch.device) -> None:
        """Collect with ``collector`` from now on, the samples' dataset indices counted in
        ``loader``'s order (unknown where ``loader`` is ``None`` or shuffles)."""
        self.stop()
        index_map = dataset_index_map(loader) if loader is not None else None
        self._index_map = _to_device(index_map, device) if index_map is not None else None
        self._seen = 0
        self._hooks.enter_context(collector.collecting())
        self._collector = collector

    def next_batch(self, batch: Any, batch_key: BatchKey, dataloader_idx: int = 0) -> None:
        """The next validation batch, whose model input (by ``batch_key``) is about to run;
        anything but a batch of images, or a batch of another loader than the first, is
        skipped. A failure costs only this run's examples."""
        assert self._collector is not None
        if dataloader_idx != 0:
            self._collector.pause()  # its forwards must not be taken for the first loader's
            return
        with self._failure_warned():
            self._next_input(model_input(batch, batch_key))

    def _next_input(self, inputs: Any) -> None:
        assert self._collector is not None
        if not torch.is_tensor(inputs) or inputs.dim() != 4:
            self._collector.pause()
            return
        count = inputs.shape[0]
        if self._index_map is not None and self._seen + count <= len(self._index_map):
            indices = self._index_map[self._seen : self._seen + count]
        else:
            indices = torch.full((count,), NO_INDEX, dtype=torch.long, device=inputs.device)
        self._seen += count
        self._collector.next_batch(inputs, indices)

    def stop(self) -> Optional[ExampleCollector]:
        """Remove every hook; the collector, if a run was being collected."""
        collector, self._collector = self._collector, None
        self._hooks.close()
        return collector


def gathered_examples(examples: dict[str, LayerExamples], strategy: Any) -> dict[str, LayerExamples]:
    """Every rank's examples, stacked ``(ranks, F, k, ...)`` on this rank's device, for
    :func:`~lightning_filterviz.capture.dataset_examples.merge_ranks` to merge on the writer thread
    (on every rank: the gathering is a collective, which every rank must call, layer by
    layer in one order).

    Args:
        examples: this rank's :meth:`ExampleCollector.results`.
        strategy: anything with Lightning's ``all_gather(tensor)`` (the trainer's strategy).
    """
    gathered = {}
    for name in sorted(examples):  # the same order on every rank: one collective after another
        found = examples[name]
        tensors = [getattr(found, field.name) for field in dataclasses.fields(found)]
        stacked = [strategy.all_gather(tensor) for tensor in tensors]
        if any(each.dim() != tensor.dim() + 1 for each, tensor in zip(stacked, tensors)):
            raise ValueError(
                f"{type(strategy).__name__}.all_gather did not stack the ranks' tensors in a new first "
                "dimension, so their examples cannot be merged."
            )
        gathered[name] = LayerExamples(*stacked)
    return gathered


def dataset_index_map(loader: Any) -> Optional[Tensor]:
    """Dataset index of each sample position of a loader's pass, when the loader reads in a
    known order: in order (a ``SequentialSampler``), through a ``DistributedSampler``
    without shuffling (its indices), or through a fixed list, tuple or range of indices
    given as its ``sampler``. ``None`` for a shuffled loader, another sampler (its order
    may change from pass to pass) or an iterable dataset.
    """
    from torch.utils.data import DistributedSampler, IterableDataset, SequentialSampler

    if isinstance(getattr(loader, "dataset", None), IterableDataset):
        return None
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, SequentialSampler):
        return torch.arange(len(loader.dataset))
    if isinstance(sampler, DistributedSampler) and not sampler.shuffle:
        return torch.tensor(list(iter(sampler)), dtype=torch.long)
    if isinstance(sampler, (list, tuple, range)) and all(isinstance(index, int) for index in sampler):
        return torch.tensor(list(sampler), dtype=torch.long)
    return None


def validation_loaders(loaders: Any) -> list[Any]:
    """The loaders of a validation run in ``dataloader_idx`` order: ``trainer.val_dataloaders``
    (one, or a list, tuple or dict of them) flattened, as Lightning numbers them."""
    if isinstance(loaders, dict):
        return [leaf for value in loaders.values() for leaf in validation_loaders(value)]
    if isinstance(loaders, (list, tuple)):
        return [leaf for value in loaders for leaf in validation_loaders(value)]
    return [] if loaders is None else [loaders]


class _OncePerFit:
    """Each kind of warning once per ``fit`` (a fit is told by its trainer)."""

    def __init__(self) -> None:
        self._trainer: Optional[weakref.ref[Any]] = None
        self._said: set[str] = set()

    def fit_of(self, trainer: Any) -> None:
        if self._trainer is None or self._trainer() is not trainer:
            self._trainer, self._said = weakref.ref(trainer), set()

    def warn(self, kind: str, message: str) -> None:
        if kind not in self._said:
            self._said.add(kind)
            rank_zero_warn(message)


def _to_device(indices: Tensor, device: torch.device) -> Tensor:
    # From pinned memory, so that the copy to a GPU does not make the host wait for it.
    if device.type == "cuda":
        return indices.pin_memory().to(device, non_blocking=True)
    return indices.to(device)
