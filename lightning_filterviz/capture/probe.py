"""The fixed probe batch: choosing it once, and getting the model input out of it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Optional, Sequence, Union

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from lightning_filterviz.core.settings import BatchKey
from lightning_filterviz.capture.rng import initialized_cuda_devices, untouched_random_state

__all__ = ["BatchKey", "model_input", "pin_memory", "probe_from_loader", "take_first", "to_cpu", "to_device"]

# An index into a tuple/list, a key into a mapping, or a function of the batch (several inputs).


def probe_from_loader(loader: DataLoader, size: int) -> tuple[Any, int]:
    """Collate the first ``size`` samples of a loader's dataset into one batch.

    Samples are taken from ``loader.dataset`` by index and collated with the loader's own
    ``collate_fn``: the loader is never iterated, so its shuffling is untouched. A dataset's
    random transforms draw from torch's, Python's and NumPy's global generators; all three
    are restored afterwards, so the training run draws what it would have drawn. A loader
    with ``batch_size=None`` yields the dataset's items as they are (ready-made batches):
    the probe is then the first ``size`` samples of the first item.

    Returns:
        The batch on the CPU and the number of samples in it (fewer than ``size`` when the
        dataset is smaller).

    Raises:
        ValueError: if the dataset cannot be indexed (an ``IterableDataset``) or is empty.
    """
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
        raise ValueError(
            f"Cannot take a probe batch from a {type(dataset).__name__}: it cannot be indexed. "
            "Pass `probe=` (a tensor or a batch) to FilterMonitor instead."
        )
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("Cannot take a probe batch from an empty dataset. Pass `probe=` instead.")
    with untouched_random_state(initialized_cuda_devices()):
        if loader.batch_size is None:  # each item is a whole batch already
            batch = take_first(loader.collate_fn(dataset[0]), size)
        else:
            count = min(size, len(dataset))  # type: ignore[arg-type]
            batch = loader.collate_fn([dataset[index] for index in range(count)])
    batch = to_cpu(batch)
    return batch, _samples_in(batch)


def model_input(batch: Any, batch_key: BatchKey = None) -> Any:
    """Get the model input out of a batch.

    Args:
        batch: a tensor, a tuple/list such as ``(images, labels)``, or a mapping.
        batch_key: index into a tuple/list, key into a mapping, or a function that takes the
            batch and returns the model input (for a model of several inputs, e.g.
            ``lambda batch: (batch[0], batch[1])`` with a ``forward_fn`` that unpacks them).
            ``None`` means the batch itself when it is a tensor and its first element when
            it is a tuple/list.

    Raises:
        ValueError: if a mapping is given without ``batch_key``, or the key is missing.
    """
    if callable(batch_key):
        return batch_key(batch)
    if batch_key is None:
        if isinstance(batch, Tensor):
            return batch
        if isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) > 0:
            return batch[0]
        if isinstance(batch, Mapping):
            raise ValueError(
                f"The probe batch is a mapping with keys {list(batch)}; set `batch_key` to the key "
                "that holds the model input, e.g. batch_key='image'."
            )
        return batch
    try:
        return batch[batch_key]
    except (KeyError, IndexError, TypeError) as error:
        available = list(batch) if isinstance(batch, Mapping) else f"{type(batch).__name__} of length {len(batch)}"
        raise ValueError(f"`batch_key={batch_key!r}` is not in the probe batch ({available}).") from error


def _samples_in(batch: Any) -> int:
    tensors: list[Tensor] = []
    apply_to_collection(batch, Tensor, tensors.append)
    return int(tensors[0].shape[0]) if tensors and tensors[0].dim() > 0 else 1


def pin_memory(batch: Any) -> Any:
    """Every CPU tensor of a batch in pinned (page-locked) memory, so copies to a GPU run asynchronously."""
    return apply_to_collection(
        batch, Tensor, lambda tensor: tensor.pin_memory() if tensor.device.type == "cpu" else tensor
    )


def take_first(batch: Any, size: int) -> Any:
    """The first ``size`` samples of every tensor in a batch."""
    return apply_to_collection(batch, Tensor, lambda tensor: tensor[:size] if tensor.dim() > 0 else tensor)


def to_cpu(batch: Any) -> Any:
    """A detached CPU copy of every tensor in a batch, so the probe never pins device memory."""
    return apply_to_collection(batch, Tensor, lambda tensor: tensor.detach().to("cpu", copy=True))


def to_device(batch: Any, device: torch.device, convert: Optional[Callable[[Tensor], Tensor]] = None) -> Any:
    """Move every tensor of a batch to ``device`` and apply an optional dtype conversion."""

    def move(tensor: Tensor) -> Tensor:
        # Asynchronous from pinned memory; a plain copy otherwise.
        tensor = tensor.to(device, non_blocking=device.type == "cuda" and tensor.is_pinned())
        return convert(tensor) if convert is not None else tensor

    return apply_to_collection(batch, Tensor, move)
