"""Dataset examples: for each drawn filter, the validation images where it fires most.

During a validation run, a forward hook on each chosen conv's tap (the module whose output
is its ReLU-family activation's input, see :class:`~lightning_filterviz.capture.activations.ActivationTap`)
takes, per image and filter, the spatial maximum and where it is; a running top-k per
filter keeps the strongest images, each at most once (at its strongest position), with the
receptive-field patch of the input there. All of it stays on the device: no
synchronization per batch, no activation kept. The results cross to the host in one
non-blocking copy at the end of the run, read on the writer thread; under DDP every rank's,
merged there (:func:`merge_ranks`).

Which forwards are collected, so that every example's position and patch belong to one
input the model saw: on each validation batch, only each tap's first call, and only if it
takes the batch's images as they are (as many as the batch holds). A validation step that
runs the model again on the same batch (test-time augmentation: a flipped copy) is collected
from its first forward only; one that runs the batch concatenated with copies (twice the
images) gives that batch nothing, as nothing tells the copies from the originals. The
collector notes each kind of call it skipped (:attr:`ExampleCollector.skipped`), for the
caller to say once. A non-finite response (a NaN or Inf pixel, an overflow) is never an
example: those positions rank below every finite one.

The patches are stored at the receptive field's size, capped at ``patch_pixels`` per side
(the field sampled nearest), so memory is at most ``max_filters * k * patch_pixels**2 *
channels`` floats per layer whatever the layer's depth.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from typing import Any, Iterator, Mapping, Optional

import torch
from torch import Tensor, nn

from lightning_filterviz.capture.activations import ActivationTap
from lightning_filterviz.capture.hook_guard import HookGuard
from lightning_filterviz.core.records import NO_INDEX, LayerExamples, ReceptiveField
from lightning_filterviz.capture.transfer import TransferPacker

__all__ = ["NO_INDEX", "ExampleCollector", "InFlightExamples", "LayerExamples", "merge_ranks"]

PATCH_PIXELS = 32
_INF = float("inf")

# Why a tap's call was not collected (see ExampleCollector.skipped).
CALLED_AGAIN = "called again on the same batch"
OTHER_BATCH_SIZE = "called on another number of images than the batch holds"


class InFlightExamples:
    """Dataset examples, and the weights of the filters they are drawn beside, on their way
    to host memory in one copy (see transfer.py): the training thread does not wait for it.

    Args:
        examples: conv name -> its examples, on the device where they were collected.
        weights: conv name -> its drawn filters' weights, on the model's device.
        gathered: ``examples`` hold every rank's, stacked ``(ranks, F, k, ...)``; they are
            merged (:func:`merge_ranks`) once on the host, by :meth:`wait`.
        pack_cpu: pack CPU tensors as for an accelerator (see :class:`TransferPacker`).
    """

    def __init__(
        self,
        examples: Mapping[str, LayerExamples],
        weights: Mapping[str, Tensor],
        *,
        gathered: bool = False,
        pack_cpu: bool = False,
    ) -> None:
        self._gathered = gathered
        packer = TransferPacker(pack_cpu=pack_cpu)
        for name, found in examples.items():
            for field in dataclasses.fields(found):
                packer.add(name, field.name, getattr(found, field.name))
        for name, weight in weights.items():
            packer.add(name, "weight", weight)
        self._host = packer.ship()

    def wait(self) -> tuple[dict[str, LayerExamples], dict[str, Tensor]]:
        """Block until the copy has arrived; the examples and the weights, on the host."""
        self._host.wait()
        arrived: dict[str, dict[str, Tensor]] = collections.defaultdict(dict)
        for name, field, tensor in self._host.views():
            arrived[name][field] = tensor
        weights = {name: tensors.pop("weight") for name, tensors in arrived.items() if "weight" in tensors}
        examples = {name: LayerExamples(**tensors) for name, tensors in arrived.items() if tensors}
        if self._gathered:
            examples = {name: merge_ranks(found) for name, found in examples.items()}
        return examples, weights


def merge_ranks(gathered: LayerExamples) -> LayerExamples:
    """One layer's examples from every rank, ``(ranks, F, k, ...)`` on the host, merged into
    the ``k`` strongest per filter. A sample that two ranks both saw (a ``DistributedSampler``
    pads the last shard with repeats) is kept once."""
    ranks, filters, k = gathered.values.shape

    def flat(tensor: Tensor) -> Tensor:  # (ranks, F, k, ...) -> (F, ranks * k, ...)
        return tensor.transpose(0, 1).reshape(filters, ranks * k, *tensor.shape[3:])

    values, indices, positions, patches = (
        flat(tensor) for tensor in (gathered.values, gathered.indices, gathered.positions, gathered.patches)
    )
    order = values.argsort(dim=1, descending=True, stable=True)
    chosen = torch.stack([_strongest_distinct(order[f].tolist(), indices[f].tolist(), k) for f in range(filters)])
    rows = torch.arange(filters)[:, None]
    return LayerExamples(values[rows, chosen], indices[rows, chosen], positions[rows, chosen], patches[rows, chosen])


def _strongest_distinct(order: list[int], indices: list[int], k: int) -> Tensor:
    picked: list[int] = []
    seen: set[int] = set()
    for slot in order:
        index = indices[slot]
        if index != NO_INDEX and index in seen:
            continue
        seen.add(index)
        picked.append(slot)
        if len(picked) == k:
            break
    # Fewer distinct samples than k: the remaining slots as they come (they hold -inf).
    remaining = [slot for slot in order if slot not in picked][: k - len(picked)]
    return torch.tensor(picked + remaining, dtype=torch.long)


class ExampleCollector:
    """Collects the top ``k`` dataset examples of each drawn filter over one validation run.

    Args:
        layers: conv name -> (the tap that sees its activation, its receptive field).
        max_filters: filters per layer (the first ones, as drawn elsewhere).
        k: examples per filter.
        patch_pixels: the most pixels per side a stored patch keeps of its field.

    Attributes:
        skipped: why calls of the taps were not collected in this pass
            (:data:`CALLED_AGAIN`, :data:`OTHER_BATCH_SIZE`); empty if every call was.
        collected_any: whether any call was collected in this pass.

    Example::

        collector = ExampleCollector({"conv1": (tap, field)}, max_filters=16, k=9)
        with collector.collecting():
            for start, (images, labels) in batches:
                collector.next_batch(images, torch.arange(start, start + len(images)))
                model(images)
        collector.results()["conv1"].as_lists()
    """

    def __init__(
        self,
        layers: dict[str, tuple[ActivationTap, ReceptiveField]],
        max_filters: int,
        k: int,
        patch_pixels: int = PATCH_PIXELS,
    ) -> None:
        self.layers = layers
        self.max_filters = max_filters
        self.k = k
        self.patch_pixels = patch_pixels
        self._best: dict[str, LayerExamples] = {}
        self._inputs: Optional[Tensor] = None
        self._indices: Optional[Tensor] = None
        self._called: set[str] = set()  # the taps already called on this batch
        self.skipped: set[str] = set()
        self.collected_any = False
        self._guard = HookGuard()  # the hooks run inside the user's forward: they never raise there

    @contextlib.contextmanager
    def collecting(self) -> Iterator[None]:
        """Hook every chosen tap for the duration; every hook is removed on the way out,
        also on an exception."""
        self._best, self.skipped, self.collected_any = {}, set(), False
        with contextlib.ExitStack() as hooks:
            for name, (tap, field) in self.layers.items():
                handle = tap.module.register_forward_hook(self._hook(name, tap, field))
                hooks.callback(handle.remove)
            try:
                yield
            finally:
                self._inputs = self._indices = None

    def next_batch(self, inputs: Tensor, dataset_indices: Tensor) -> None:
        """The model input of the batch about to run (on the model's device), and each of its
        images' dataset index (``-1`` where unknown; moved to the input's device if elsewhere)."""
        self._inputs, self._indices = inputs, dataset_indices.to(inputs.device, non_blocking=True)
        self._called = set()

    def pause(self) -> None:
        """Collect nothing until the next :meth:`next_batch` (a batch that is not to be collected)."""
        self._inputs = self._indices = None

    def results(self) -> dict[str, LayerExamples]:
        """Each layer's examples, on the device where they were collected.

        Raises:
            Exception: what a hook raised while collecting (the forward itself went on, and
                no later batch was collected).
        """
        if self._guard.error is not None:
            raise self._guard.error
        return dict(self._best)

    def _hook(self, name: str, tap: ActivationTap, field: ReceptiveField) -> Any:
        def merge(module: nn.Module, args: Any, output: Any) -> None:
            if self._inputs is None or not torch.is_tensor(output) or output.dim() != 4:
                return  # a forward outside the batches we were told about
            if name in self._called:
                self.skipped.add(CALLED_AGAIN)  # a copy of the batch (augmented) or a reused layer
                return
            self._called.add(name)
            with torch.no_grad():
                if output.shape[0] != self._inputs.shape[0]:
                    # Copies joined to the batch: no telling which images are the batch's.
                    self.skipped.add(OTHER_BATCH_SIZE)
                    self._ensure_slots(name, field, output)
                    return
                self._merge(name, tap, field, output)
                self.collected_any = True

        return self._guard.wrap(merge)

    def _merge(self, name: str, tap: ActivationTap, field: ReceptiveField, output: Tensor) -> None:
        assert self._inputs is not None and self._indices is not None
        # A non-finite response is never an example: it ranks below every finite one (on the
        # device, no check on the host), so an image is kept at its strongest finite position.
        maps = output[:, : self.max_filters].detach().nan_to_num(nan=-_INF, posinf=-_INF, neginf=-_INF)
        filters, width = maps.shape[1], maps.shape[3]
        # Each image once per filter, at its strongest position: the peaks first, the position
        # only for the images that make the top k.
        strongest = maps.amax(dim=(2, 3)).float()  # (N, F)
        # An image without a finite response stays at -inf, an empty slot, whatever the activation.
        peak = torch.where(strongest == -_INF, strongest, tap.activation(strongest))
        best = self._ensure_slots(name, field, output)
        values = torch.cat([best.values, peak.t()], dim=1)  # (F, k + N)
        kept_values, kept = values.topk(self.k, dim=1)
        from_batch = kept >= self.k
        batch_image = (kept - self.k).clamp(min=0)  # (F, k) into the batch
        rows = torch.arange(filters, device=maps.device)[:, None]
        chosen_maps = maps.transpose(0, 1)[rows, batch_image]  # (F, k, H, W)
        output_position = chosen_maps.flatten(2).argmax(dim=2)  # (F, k) flat index into (H, W)
        out_y, out_x = output_position // width, output_position % width
        centre_y, centre_x, patches = self._patches(batch_image, out_y, out_x, field)
        positions = torch.stack([centre_y, centre_x], dim=-1)
        self._best[name] = LayerExamples(
            values=kept_values,
            indices=torch.where(from_batch, self._indices[batch_image], _take(best.indices, kept)),
            positions=torch.where(from_batch[..., None], positions, _take(best.positions, kept)),
            patches=torch.where(from_batch[..., None, None, None], patches, _take(best.patches, kept)),
        )

    def _patch_size(self, field: ReceptiveField) -> tuple[int, int]:
        # A field smaller than the cap is kept pixel for pixel; drawing scales it up.
        return min(field.size[0], self.patch_pixels), min(field.size[1], self.patch_pixels)

    def _patches(
        self, image: Tensor, out_y: Tensor, out_x: Tensor, field: ReceptiveField
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The receptive field of output ``(out_y, out_x)`` in batch image ``image``, sampled
        nearest at most ``patch_pixels`` per side; and the field's centre in input pixels."""
        assert self._inputs is not None
        inputs = self._inputs.float()
        height, width = inputs.shape[-2:]
        patch_height, patch_width = self._patch_size(field)
        top = field.offset[0] + out_y * field.stride[0]
        left = field.offset[1] + out_x * field.stride[1]
        steps_y = torch.arange(patch_height, device=inputs.device) * field.size[0] // patch_height
        steps_x = torch.arange(patch_width, device=inputs.device) * field.size[1] // patch_width
        rows, cols = top[..., None] + steps_y, left[..., None] + steps_x  # (F, k, h), (F, k, w)
        inside = ((rows >= 0) & (rows < height))[..., :, None] & ((cols >= 0) & (cols < width))[..., None, :]
        at_rows, at_cols = rows.clamp(0, height - 1)[..., :, None], cols.clamp(0, width - 1)[..., None, :]
        pixels = inputs[image[..., None, None], :, at_rows, at_cols]  # (F, k, h, w, C)
        pixels = torch.where(inside[..., None], pixels, torch.full_like(pixels, float("nan")))
        return top + field.size[0] // 2, left + field.size[1] // 2, pixels.permute(0, 1, 4, 2, 3)

    def _ensure_slots(self, name: str, field: ReceptiveField, output: Tensor) -> LayerExamples:
        """The examples kept so far for ``name``; empty slots at its first batch (so that every
        rank has every layer's, also a rank none of whose batches could be collected)."""
        if name not in self._best:
            self._best[name] = self._empty(min(output.shape[1], self.max_filters), field, output.device)
        return self._best[name]

    def _empty(self, filters: int, field: ReceptiveField, device: torch.device) -> LayerExamples:
        # Fixed shapes from the start (k slots, empty ones at -inf), so that every rank's
        # results can be gathered whatever it has seen.
        assert self._inputs is not None
        channels, k = self._inputs.shape[1], self.k
        return LayerExamples(
            values=torch.full((filters, k), float("-inf"), device=device),
            indices=torch.full((filters, k), NO_INDEX, dtype=torch.long, device=device),
            positions=torch.zeros(filters, k, 2, dtype=torch.long, device=device),
            patches=torch.full((filters, k, channels, *self._patch_size(field)), float("nan"), device=device),
        )


def _take(kept_so_far: Tensor, kept: Tensor) -> Tensor:
    """``kept_so_far[f, kept[f, j]]`` where ``kept`` points into what was kept so far (other
    entries, which come from the batch, get any row: they are replaced)."""
    index = kept.clamp(max=kept_so_far.shape[1] - 1)
    rows = torch.arange(kept.shape[0], device=kept.device)[:, None]
    return kept_so_far[rows, index]
