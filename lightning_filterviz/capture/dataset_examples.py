"""Dataset examples: for each drawn filter, the validation images where it fires most.

During a validation run, a forward hook on each chosen conv's tap (the module whose output
is its ReLU-family activation's input, see :class:`~lightning_filterviz.capture.activations.ActivationTap`)
takes, per image and filter, the spatial maximum and where it is; a running top-``4k`` per
filter keeps the strongest images as candidates, each at most once (at its strongest
position), with the input pixels of a context window around it. All of it stays on the
device: fixed shapes, no synchronization per batch, no activation kept. The results cross
to the host in one non-blocking copy at the end of the run, read on the writer thread;
under DDP every rank's, merged there (:func:`merge_ranks`). There the ``k`` examples are
chosen among the candidates, strongest first, each from a distinct place of the data
(:func:`~lightning_filterviz.capture.distinct_places.distinct_places`): overlapping crops
or a repeated image show one place once. More candidates than examples are kept because
such repeats can fill the top ``k``.

Which forwards are collected, so that every example's position and patch belong to one
input the model saw: on each validation batch, only each tap's first call, and only if it
takes the batch's images as they are (as many as the batch holds). A validation step that
runs the model again on the same batch (test-time augmentation: a flipped copy) is collected
from its first forward only; one that runs the batch concatenated with copies (twice the
images) gives that batch nothing, as nothing tells the copies from the originals. The
collector notes each kind of call it skipped (:attr:`ExampleCollector.skipped`), for the
caller to say once. A non-finite response (a NaN or Inf pixel, an overflow) is never an
example: those positions rank below every finite one.

Each candidate keeps a context window: ``max(32, field size)`` input pixels a side around
the receptive field's centre, moved to lie inside the image where the image is at least
that large (an example at an image's edge still shows 32 pixels of it a side), sampled
nearest at most ``patch_pixels`` (32) per side, NaN where it lies outside the image; and
where the field lies in it (:attr:`LayerExamples.boxes`). So the device holds at most
``max_filters * 4 * k * patch_pixels**2 * channels`` floats per layer whatever the layer's
depth (64 filters, k = 9, RGB: 28 MB), plus a few numbers per candidate.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from typing import Any, Iterator, Mapping, Optional

import torch
from torch import Tensor, nn

from lightning_filterviz.capture.activations import ActivationTap
from lightning_filterviz.capture.distinct_places import distinct_places
from lightning_filterviz.capture.hook_guard import HookGuard
from lightning_filterviz.core.records import NO_INDEX, LayerExamples, ReceptiveField
from lightning_filterviz.capture.transfer import TransferPacker

__all__ = ["NO_INDEX", "ExampleCollector", "InFlightExamples", "LayerExamples", "merge_ranks"]

PATCH_PIXELS = 32
# The least input pixels a side an example shows around its peak.
CONTEXT_PIXELS = 32
# Candidates kept per example on the device, so that k distinct places remain after repeats.
CANDIDATES_PER_EXAMPLE = 4
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
        gathered: ``examples`` hold every rank's, stacked ``(ranks, F, slots, ...)``; they are
            merged (:func:`merge_ranks`) once on the host, by :meth:`wait`.
        k: examples per filter, chosen among the candidates by :meth:`wait`, each from a
            distinct place (see :func:`~lightning_filterviz.capture.distinct_places.distinct_places`);
            ``None`` keeps every candidate as it is.
        pack_cpu: pack CPU tensors as for an accelerator (see :class:`TransferPacker`).
    """

    def __init__(
        self,
        examples: Mapping[str, LayerExamples],
        weights: Mapping[str, Tensor],
        *,
        gathered: bool = False,
        k: Optional[int] = None,
        pack_cpu: bool = False,
    ) -> None:
        self._gathered, self._k = gathered, k
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
        if self._k is not None:
            examples = {name: distinct_places(found, self._k) for name, found in examples.items()}
        return examples, weights


def merge_ranks(gathered: LayerExamples) -> LayerExamples:
    """One layer's candidates from every rank, ``(ranks, F, slots, ...)`` on the host, merged
    into the ``slots`` strongest per filter. A sample that two ranks both saw (a
    ``DistributedSampler`` pads the last shard with repeats) is kept once."""
    ranks, filters, slots = gathered.values.shape

    def flat(tensor: Tensor) -> Tensor:  # (ranks, F, slots, ...) -> (F, ranks * slots, ...)
        return tensor.transpose(0, 1).reshape(filters, ranks * slots, *tensor.shape[3:])

    values, indices = flat(gathered.values), flat(gathered.indices)
    order = values.argsort(dim=1, descending=True, stable=True)
    chosen = torch.stack([_strongest_distinct(order[f].tolist(), indices[f].tolist(), slots) for f in range(filters)])
    rows = torch.arange(filters)[:, None]
    return LayerExamples(
        **{field.name: flat(getattr(gathered, field.name))[rows, chosen] for field in dataclasses.fields(gathered)}
    )


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
        k: examples per filter; :data:`CANDIDATES_PER_EXAMPLE` times as many candidates
            are kept (:attr:`slots`), for the host to choose ``k`` distinct places among.
        patch_pixels: the most pixels per side a stored context window keeps.

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
        collector.results()["conv1"].as_lists()  # every candidate, strongest first
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
        self.slots = CANDIDATES_PER_EXAMPLE * k
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
        """Each layer's :attr:`slots` candidates per filter, strongest first, on the device
        where they were collected (:class:`InFlightExamples` with ``k`` chooses the examples).

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
        # Each image once per filter, at its strongest position: value and place in one pass.
        strongest, strongest_at = maps.flatten(2).max(dim=2)  # (N, F) each
        strongest = strongest.float()
        # An image without a finite response stays at -inf, an empty slot, whatever the activation.
        peak = torch.where(strongest == -_INF, strongest, tap.activation(strongest))
        best = self._ensure_slots(name, field, output)
        values = torch.cat([best.values, peak.t()], dim=1)  # (F, slots + N)
        kept_values, kept = values.topk(self.slots, dim=1)
        from_batch = kept >= self.slots
        batch_image = (kept - self.slots).clamp(min=0)  # (F, slots) into the batch
        rows = torch.arange(filters, device=maps.device)[:, None]
        output_position = strongest_at.t()[rows, batch_image]  # (F, slots) flat index into (H, W)
        out_y, out_x = output_position // width, output_position % width
        positions, patches, boxes = self._context(batch_image, out_y, out_x, field)
        found = LayerExamples(kept_values, self._indices[batch_image], positions, patches, boxes)
        self._best[name] = LayerExamples(
            **{
                each.name: _from_batch_or_kept(from_batch, getattr(found, each.name), getattr(best, each.name), kept)
                for each in dataclasses.fields(best)
            }
        )

    def _window_size(self, field: ReceptiveField) -> tuple[tuple[int, int], tuple[int, int]]:
        """The context window's input pixels a side ``(y, x)``, and the stored pixels a side."""
        span = (max(CONTEXT_PIXELS, field.size[0]), max(CONTEXT_PIXELS, field.size[1]))
        return span, (min(span[0], self.patch_pixels), min(span[1], self.patch_pixels))

    def _context(
        self, image: Tensor, out_y: Tensor, out_x: Tensor, field: ReceptiveField
    ) -> tuple[Tensor, Tensor, Tensor]:
        """For output ``(out_y, out_x)`` of batch image ``image``: the field's centre in input
        pixels, the context window around it (see the module's docstring) and the field's box
        in the window, as :class:`LayerExamples` holds them."""
        assert self._inputs is not None
        height, width = self._inputs.shape[-2:]
        (span_y, span_x), (side_y, side_x) = self._window_size(field)
        top = field.offset[0] + out_y * field.stride[0]
        left = field.offset[1] + out_x * field.stride[1]
        window_top = _inside(top + field.size[0] // 2 - span_y // 2, span_y, height)
        window_left = _inside(left + field.size[1] // 2 - span_x // 2, span_x, width)
        # Every window of the (NaN-padded, where smaller than one) images as a view; the chosen
        # ones copied block by block, far cheaper than indexing pixel by pixel.
        pad_y, pad_x = max(0, span_y - height), max(0, span_x - width)
        inputs = self._inputs.float()
        if pad_y or pad_x:
            inputs = torch.nn.functional.pad(inputs, (pad_x, pad_x, pad_y, pad_y), value=float("nan"))
        windows = inputs.unfold(2, span_y, 1).unfold(3, span_x, 1)  # (N, C, H', W', span_y, span_x)
        pixels = windows[image, :, window_top + pad_y, window_left + pad_x]  # (F, s, C, span_y, span_x)
        if (side_y, side_x) != (span_y, span_x):  # a large field, sampled nearest
            steps_y = torch.arange(side_y, device=inputs.device) * span_y // side_y
            steps_x = torch.arange(side_x, device=inputs.device) * span_x // side_x
            pixels = pixels.index_select(3, steps_y).index_select(4, steps_x)
        # The field in the window's stored pixels (floor at the start, at least one pixel long).
        box = torch.stack(
            [
                torch.div((top - window_top) * side_y, span_y, rounding_mode="floor"),
                torch.div((left - window_left) * side_x, span_x, rounding_mode="floor"),
                torch.full_like(top, max(1, field.size[0] * side_y // span_y)),
                torch.full_like(left, max(1, field.size[1] * side_x // span_x)),
            ],
            dim=-1,
        )
        centre = torch.stack([top + field.size[0] // 2, left + field.size[1] // 2], dim=-1)
        return centre, pixels, box

    def _ensure_slots(self, name: str, field: ReceptiveField, output: Tensor) -> LayerExamples:
        """The examples kept so far for ``name``; empty slots at its first batch (so that every
        rank has every layer's, also a rank none of whose batches could be collected)."""
        if name not in self._best:
            self._best[name] = self._empty(min(output.shape[1], self.max_filters), field, output.device)
        return self._best[name]

    def _empty(self, filters: int, field: ReceptiveField, device: torch.device) -> LayerExamples:
        # Fixed shapes from the start (every slot, empty ones at -inf), so that every rank's
        # results can be gathered whatever it has seen.
        assert self._inputs is not None
        channels, slots = self._inputs.shape[1], self.slots
        return LayerExamples(
            values=torch.full((filters, slots), float("-inf"), device=device),
            indices=torch.full((filters, slots), NO_INDEX, dtype=torch.long, device=device),
            positions=torch.zeros(filters, slots, 2, dtype=torch.long, device=device),
            patches=torch.full((filters, slots, channels, *self._window_size(field)[1]), float("nan"), device=device),
            boxes=torch.zeros(filters, slots, 4, dtype=torch.long, device=device),
        )


def _inside(start: Tensor, span: int, length: int) -> Tensor:
    """Window starts moved so that ``span`` pixels from there lie inside ``0..length`` where
    ``length >= span``; where the image is smaller, so that the window covers all of it."""
    return start.clamp(min(0, length - span), max(0, length - span))


def _from_batch_or_kept(from_batch: Tensor, batch: Tensor, kept_so_far: Tensor, kept: Tensor) -> Tensor:
    """Per slot ``(f, j)``: ``batch[f, j]`` where it comes from the batch, else
    ``kept_so_far[f, kept[f, j]]`` (``kept`` points into what was kept so far there)."""
    index = kept.clamp(max=kept_so_far.shape[1] - 1)
    rows = torch.arange(kept.shape[0], device=kept.device)[:, None]
    where = from_batch.reshape(*from_batch.shape, *([1] * (batch.dim() - 2)))
    return torch.where(where, batch, kept_so_far[rows, index])
