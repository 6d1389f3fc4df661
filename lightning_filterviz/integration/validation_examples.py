"""Dataset examples during ``fit``: each validation run collected, the ranks' shares gathered.

:class:`ValidationExamples` is the callback's side of dataset_examples.py: it hooks the
engine's collector in for one validation run, tells it each batch's dataset indices, and
at the end gathers every rank's examples on the device for rank 0 to publish (its writer
thread merges them, each sample once: :func:`~lightning_filterviz.capture.dataset_examples.merge_ranks`).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator, Optional

import torch
from lightning_utilities.core.rank_zero import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_filterviz.capture.dataset_examples import ExampleCollector
from lightning_filterviz.core.records import NO_INDEX, LayerExamples
from lightning_filterviz.capture.probe import BatchKey, model_input
from lightning_filterviz.integration.trainer_reading import validation_loader_in_use

if TYPE_CHECKING:
    from lightning_filterviz.engine.visualizer import FilterVisualizer

__all__ = ["ValidationExamples", "dataset_index_map", "gathered_examples"]


class ValidationExamples:
    """The dataset examples of each validation run of ``fit`` (not the sanity check): the
    engine's collector hooked in at the start, fed every batch with the dataset index of
    its samples (counted from the loader's order, see :func:`dataset_index_map`), and at
    the end every rank's examples gathered and published by rank 0."""

    def __init__(self) -> None:
        self._hooks = contextlib.ExitStack()
        self._collector: Optional[ExampleCollector] = None
        self._index_map: Optional[Tensor] = None
        self._seen = 0

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
        with self._failure_warned():
            collector = engine.dataset_examples_pass(model)
            if collector is not None:
                self.start(collector, validation_loader_in_use(trainer), model.device)

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
        examples, gathered = collector.results(), trainer.world_size > 1
        if gathered:
            examples = gathered_examples(examples, trainer.strategy)
        if trainer.is_global_zero:
            engine.publish_dataset_examples(examples, model, trainer.global_step, gathered=gathered)

    def start(self, collector: ExampleCollector, loader: Optional[DataLoader], device: torch.device) -> None:
        """Collect with ``collector`` from now on, the samples' dataset indices counted in
        ``loader``'s order (unknown where ``loader`` is ``None`` or shuffles)."""
        self.stop()
        index_map = dataset_index_map(loader) if loader is not None else None
        self._index_map = _to_device(index_map, device) if index_map is not None else None
        self._seen = 0
        self._hooks.enter_context(collector.collecting())
        self._collector = collector

    def next_batch(self, batch: Any, batch_key: BatchKey) -> None:
        """The next validation batch, whose model input (by ``batch_key``) is about to run;
        anything but a batch of images is skipped. A failure costs only this run's examples."""
        with self._failure_warned():
            self._next_input(model_input(batch, batch_key))

    def _next_input(self, inputs: Any) -> None:
        assert self._collector is not None
        if not torch.is_tensor(inputs) or inputs.dim() != 4:
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
        tensors = (found.values, found.indices, found.positions, found.patches)
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
    known order: in order (a ``SequentialSampler``), or through a ``DistributedSampler``
    without shuffling (its indices). ``None`` for a shuffled loader or an iterable dataset.
    """
    from torch.utils.data import DistributedSampler, IterableDataset, SequentialSampler

    if isinstance(getattr(loader, "dataset", None), IterableDataset):
        return None
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, SequentialSampler):
        return torch.arange(len(loader.dataset))
    if isinstance(sampler, DistributedSampler) and not sampler.shuffle:
        return torch.tensor(list(iter(sampler)), dtype=torch.long)
    return None


def _to_device(indices: Tensor, device: torch.device) -> Tensor:
    # From pinned memory, so that the copy to a GPU does not make the host wait for it.
    if device.type == "cuda":
        return indices.pin_memory().to(device, non_blocking=True)
    return indices.to(device)
