"""The fixed probe batch: choosing it once, and getting the model input out of it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from lightning_filterviz.core.settings import BatchKey
from lightning_filterviz.capture.conv_layers import select_conv_layers
from lightning_filterviz.capture.rng import initialized_cuda_devices, untouched_random_state

__all__ = [
    "BatchKey",
    "ImageInput",
    "check_given_probe",
    "check_probe_input",
    "first_samples",
    "given_probe",
    "image_input_of",
    "model_input",
    "pin_memory",
    "probe_from_loader",
    "take_first",
    "to_cpu",
    "to_device",
]


@dataclass(frozen=True)
class ImageInput:
    """What a model's first ``nn.Conv2d`` takes, to tell one image ``(C, H, W)`` from a batch.

    Args:
        conv: the conv's name in ``named_modules()``.
        channels: its ``in_channels``.
    """

    conv: str
    channels: int

    def is_image(self, value: Any) -> bool:
        """Whether ``value`` is one image for this conv: a 3-d tensor of its channels."""
        return isinstance(value, Tensor) and value.dim() == 3 and value.shape[0] == self.channels


def image_input_of(model: nn.Module) -> Optional[ImageInput]:
    """The first ``nn.Conv2d`` of ``model`` (in ``named_modules()`` order) and its input
    channels; ``None`` when it has none."""
    convs = select_conv_layers(model, None)
    return ImageInput(convs[0].name, convs[0].module.in_channels) if convs else None


def check_given_probe(probe: Any) -> None:
    """What can be checked of a ``probe=`` without the model: that it holds samples.

    Raises:
        ValueError: for a tensor without a batch dimension (0-d) or without samples, an empty
            container, or a batch with no tensor in it.
    """
    if probe is None:
        return
    tensors: list[Tensor] = []
    apply_to_collection(probe, Tensor, tensors.append)
    if not tensors:
        raise ValueError(
            f"`probe` holds no tensor (got {type(probe).__name__}): pass a batch of images as a tensor "
            "(N, C, H, W), or a batch shaped like the training batches that holds one."
        )
    if isinstance(probe, Tensor) and (probe.dim() == 0 or probe.shape[0] == 0):
        raise ValueError(
            f"`probe` has shape {tuple(probe.shape)}, so it holds no sample: pass a batch of images (N, C, H, W)."
        )


def probe_from_loader(loader: DataLoader, size: int, images: Optional[ImageInput] = None) -> tuple[Any, int]:
    """Collate the first ``size`` samples of a loader's dataset into one batch.

    Samples are taken from ``loader.dataset`` by index and collated with the loader's own
    ``collate_fn``: the loader is never iterated, so its shuffling is untouched. A dataset's
    random transforms draw from torch's, Python's and NumPy's global generators; all three
    are restored afterwards, so the training run draws what it would have drawn. A loader
    with ``batch_size=None`` yields the dataset's items as they are (ready-made batches):
    the probe is then the first ``size`` samples of the first item (see :func:`first_samples`,
    which ``images`` serves).

    Returns:
        The batch on the CPU and the number of samples in it (fewer than ``size`` when the
        dataset is smaller): the samples given to the ``collate_fn``, whatever it returns (a
        list of images, say).

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
            batch, count = first_samples(loader.collate_fn(dataset[0]), size, images)
        else:
            count = min(size, len(dataset))  # type: ignore[arg-type]
            batch = loader.collate_fn([dataset[index] for index in range(count)])
    return to_cpu(batch), count


def model_input(batch: Any, batch_key: BatchKey = None) -> Any:
    """Get the model input out of a batch.

    Args:
        batch: a tensor, a tuple/list such as ``(images, labels)``, or a mapping.
        batch_key: index into a tuple/list (negative ones count from the end, as in Python),
            key into a mapping, or a function that takes the batch and returns the model input (for a model of several inputs, e.g.
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


def first_samples(batch: Any, size: int, images: Optional[ImageInput] = None) -> tuple[Any, int]:
    """The first ``size`` samples of a batch, and how many it holds.

    A list or tuple of images (3-d tensors of the channels ``images`` names, as a
    ``collate_fn`` that does not stack returns them) is a list of samples: its first ``size``
    items. Any other batch holds its samples along the first dimension of each tensor.
    """
    if _is_image_list(batch, images):
        kept = batch[:size]
        return kept, len(kept)
    kept = take_first(batch, size)
    tensors: list[Tensor] = []
    apply_to_collection(kept, Tensor, tensors.append)
    return kept, int(tensors[0].shape[0]) if tensors and tensors[0].dim() > 0 else 1


def given_probe(probe: Any, size: int, images: Optional[ImageInput], batch_key: BatchKey) -> Any:
    """A ``probe=`` as the probe batch: its first ``size`` samples; a list of images of one
    size stacked into one batch (as the default ``collate_fn`` would), when ``batch_key``
    would otherwise pick one image of it.

    Raises:
        ValueError: for such a list of images of different sizes, which cannot be stacked.
    """
    if batch_key is None and _is_image_list(probe, images):
        shapes = sorted({tuple(image.shape) for image in probe})
        if len(shapes) > 1:
            raise ValueError(
                f"`probe` is a list of {len(probe)} images of different sizes ({shapes[:3]}), which cannot be "
                "stacked into one batch. Resize them to one size (then a list is stacked for you), or, for a "
                "model that takes a list of images, pass batch_key=lambda batch: batch."
            )
        probe = torch.stack(list(probe))
    batch, _ = first_samples(probe, size, images)
    return batch


def check_probe_input(inputs: Any, batch: Any, images: Optional[ImageInput], batch_key: BatchKey) -> None:
    """Refuse a probe whose model input cannot be a batch of images, before any step.

    ``inputs`` (what ``batch_key`` takes out of ``batch``) is refused when it is one image (a
    3-d tensor with the channels of the model's first ``nn.Conv2d``, ``images``) or holds at
    most one value per sample (a 0-d or 1-d tensor, such as the labels). With ``images``
    ``None`` (no conv, or a ``forward_fn`` that decides how the input reaches the model)
    nothing is refused.

    Raises:
        ValueError: naming the shape and what to pass instead.
    """
    if images is None or not isinstance(inputs, Tensor):
        return
    if inputs.dim() < 2:
        raise ValueError(_not_images_message(inputs, batch, images, batch_key))
    if not images.is_image(inputs):
        return
    problem = (
        f"The probe's model input has shape {tuple(inputs.shape)}: a single image, not a batch "
        f"({images.conv!r}, the model's first nn.Conv2d, takes {images.channels} channel(s))."
    )
    if _is_image_list(batch, images):
        fix = (
            f"The probe batch is a list of {len(batch)} images (as a collate_fn that does not stack returns them), "
            f"and batch_key={batch_key!r} takes one of them. Set `batch_key` to what gives the model its input: "
            "batch_key=torch.stack for images of one size, or batch_key=lambda batch: batch for a model that "
            "takes a list."
        )
    elif isinstance(batch, Tensor) and isinstance(batch_key, int):
        fix = f"`batch_key={batch_key}` indexes the tensor probe and so takes one sample; leave batch_key=None."
    else:
        fix = (
            "Pass a batch as `probe`, e.g. probe.unsqueeze(0) for one image (a DataLoader with batch_size=None "
            "must yield batches too). A model that really takes 3-d input can be run through `forward_fn`, "
            "which skips this check."
        )
    raise ValueError(f"{problem} {fix}")


def _not_images_message(inputs: Tensor, batch: Any, images: ImageInput, batch_key: BatchKey) -> str:
    problem = (
        f"The probe's model input has shape {tuple(inputs.shape)} ({inputs.dtype}): at most one value per "
        f"sample, not the images {images.conv!r} (the model's first nn.Conv2d) takes."
    )
    if isinstance(batch_key, int) and isinstance(batch, (list, tuple)) and batch:
        position = batch_key % len(batch)
        image_positions = [i for i, item in enumerate(batch) if isinstance(item, Tensor) and item.dim() >= 3]
        hint = f", e.g. batch_key={image_positions[0]}" if image_positions else ""
        fix = (
            f"`batch_key={batch_key}` takes element {position} of the {len(batch)}-element batch (negative "
            f"indices count from the end, as in Python). Set `batch_key` to the index of the images{hint}."
        )
    else:
        fix = "Set `batch_key` to where the images are in the batch (an index, a key or a function of the batch)."
    return (
        f"{problem} {fix} A model that really takes such input can be run through `forward_fn`, which skips "
        "this check."
    )


def _is_image_list(batch: Any, images: Optional[ImageInput]) -> bool:
    # A namedtuple is a batch of named fields, never a list of samples.
    if images is None or not isinstance(batch, (list, tuple)) or hasattr(batch, "_fields") or not batch:
        return False
    return all(images.is_image(item) for item in batch)


def finite_on_host(inputs: Any) -> Optional[bool]:
    """Whether every floating-point value of ``inputs`` is finite; ``None`` (not known) where
    any of its tensors is not in host memory, since reading the answer there would wait for
    the device."""
    tensors: list[Tensor] = []
    apply_to_collection(inputs, Tensor, tensors.append)
    if any(tensor.device.type != "cpu" for tensor in tensors):
        return None
    return all(bool(torch.isfinite(tensor).all()) for tensor in tensors if tensor.is_floating_point())


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
