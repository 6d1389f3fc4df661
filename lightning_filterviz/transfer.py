"""One copy per snapshot from the accelerator to host memory.

Each ``.cpu()`` of a CUDA tensor waits for all the GPU work queued before it; one per layer
and statistic costs a snapshot tens of milliseconds. Instead, every tensor a snapshot
needs is packed on its device into one float32 buffer (integer tensors reinterpreted bit
for bit, not converted) by two concatenations, not a copy each (on a GPU every op costs
the training thread a launch), copied once with ``non_blocking=True`` into pinned host
memory, and followed by a CUDA event. The training thread goes on at once; whoever reads the
values (the writer thread) waits on the event first.

On the CPU nothing needs to travel, so nothing is packed: each tensor is copied on its
own (which detaches the values from the live weights that the optimizer goes on changing;
one large fresh buffer would cost more in page faults than the copies themselves), and
tensors computed for the snapshot alone (statistics, reduced maps), which nothing writes
to again, are handed on as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

__all__ = ["HostBuffer", "TransferPacker"]


@dataclass(frozen=True)
class _Slot:
    owner: Any
    field: str
    offset: int
    length: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    # The order the tensor's dimensions were packed in (its memory order), when not the logical one.
    packed_order: Optional[tuple[int, ...]] = None


class HostBuffer:
    """Host copies of the packed tensors, readable once :meth:`wait` has returned.

    Args:
        buffers: per device, the host buffer its tensors were copied into.
        slots: where each tensor lies in its device's buffer.
        events: the CUDA events recorded after the copies (empty on the CPU).
        kept: ``(owner, field, tensor)`` for CPU tensors, copied on their own or handed on.
    """

    def __init__(
        self,
        buffers: dict[torch.device, Tensor],
        slots: dict[torch.device, list[_Slot]],
        events: list[Any],
        kept: Optional[list[tuple[Any, str, Tensor]]] = None,
    ):
        self._buffers = buffers
        self._slots = slots
        self._events = events
        self._kept = kept or []

    def views(self) -> list[tuple[Any, str, Tensor]]:
        """``(owner, field, tensor)`` for every shipped tensor: CPU views into the host buffers,
        and the CPU tensors, copied on their own or handed on (see :meth:`TransferPacker.add`).

        The views exist at once; their values are there after :meth:`wait`.
        """
        unpacked = list(self._kept)
        for device, slots in self._slots.items():
            unpacked += [(slot.owner, slot.field, _slot_view(self._buffers[device], slot)) for slot in slots]
        return unpacked

    def wait(self) -> None:
        """Block until every copy into host memory has completed (at once on the CPU)."""
        for event in self._events:
            event.synchronize()


class TransferPacker:
    """Collects tensors on their devices, then ships them to the host in one copy per device.

    Args:
        pack_cpu: pack CPU tensors too, as for an accelerator, instead of copying each on
            its own; the packing is then exercised on any machine (tests).

    Example::

        packer = TransferPacker()
        packer.add(layer, "channel_max", channel_max)   # any device, any float or int64 dtype
        host = packer.ship()                            # returns without waiting
        host.wait()
        for owner, field, tensor in host.views():
            setattr(owner, field, tensor)
    """

    def __init__(self, *, pack_cpu: bool = False) -> None:
        self._pack_cpu = pack_cpu
        self._pending: dict[torch.device, list[tuple[Any, str, Tensor]]] = {}
        self._kept: list[tuple[Any, str, Tensor]] = []

    def add(self, owner: Any, field: str, tensor: Tensor, *, fresh: bool = False) -> None:
        """Pack ``tensor`` (detached); it comes back as ``(owner, field, view)``.

        Floating-point tensors come back as float32; int64 tensors as int64.

        Args:
            owner: what the tensor belongs to (any object; it comes back as it was given).
            field: its name there.
            tensor: on any device.
            fresh: ``tensor`` was computed for this shipment and nothing writes to it again:
                on the CPU it is handed on as it is (in float32 or int64), not copied.

        Raises:
            TypeError: for a tensor of another dtype.
        """
        dtype = _packed_dtype(tensor)
        if tensor.requires_grad and torch.is_grad_enabled():  # without autograd, a copy records nothing
            tensor = tensor.detach()
        if tensor.device.type == "cpu" and not self._pack_cpu:
            # Each call here is a dispatched op, so none is made that would change nothing.
            kept = tensor if fresh and tensor.dtype == dtype else tensor.to(dtype, copy=not fresh)
            self._kept.append((owner, field, kept))
        else:
            self._pending.setdefault(tensor.device, []).append((owner, field, tensor))

    def holds(self, owner: Any, field: str) -> bool:
        """Whether a tensor for ``owner.<field>`` waits to be shipped."""
        entries = [entry for device_entries in self._pending.values() for entry in device_entries] + self._kept
        return any(o is owner and f == field for o, f, _ in entries)

    def ship(self) -> HostBuffer:
        """Pack each device's tensors into one buffer and start its copy to host memory."""
        buffers: dict[torch.device, Tensor] = {}
        slots: dict[torch.device, list[_Slot]] = {}
        events = []
        for device, entries in self._pending.items():
            # The int64 tensors first: each fills an even number of float32 places, so every
            # one starts on the 8-byte boundary an int64 view needs.
            entries.sort(key=lambda entry: entry[2].dtype != torch.int64)
            device_slots, offset = [], 0
            for owner, field, tensor in entries:
                dtype = _packed_dtype(tensor)
                length = tensor.numel() * (2 if dtype == torch.int64 else 1)
                order = _memory_order(tensor)
                device_slots.append(_Slot(owner, field, offset, length, tuple(tensor.shape), dtype, order))
                offset += length
            packed = _packed(entries, device_slots, offset, device)
            buffers[device], event = _to_host(packed)
            slots[device] = device_slots
            if event is not None:
                events.append(event)
        kept, self._pending, self._kept = self._kept, {}, []
        return HostBuffer(buffers, slots, events, kept)


def _packed(entries: list[tuple[Any, str, Tensor]], slots: list[_Slot], size: int, device: torch.device) -> Tensor:
    """One float32 buffer of ``size`` holding each tensor in its slot, in the tensor's own
    memory order (a channels_last weight is copied as it lies, not transposed). Being a copy,
    later in-place updates of the weights do not leak in."""
    packed = torch.empty(size, dtype=torch.float32, device=device)
    flat = [_flattened(tensor, slot) for slot, (_, _, tensor) in zip(slots, entries)]
    integers = sum(slot.dtype == torch.int64 for slot in slots)
    integer_places = sum(slot.length for slot in slots[:integers])
    with torch.no_grad():  # the weights still require grad here; nothing is to be recorded
        if integers:
            torch.cat(flat[:integers], out=packed[:integer_places].view(torch.int64))
        if integers < len(flat):
            torch.cat(flat[integers:], out=packed[integer_places:])  # other floats become float32 here
    return packed


def _flattened(tensor: Tensor, slot: _Slot) -> Tensor:
    """``tensor`` as one dimension in its memory order, with one op at most (each op is a
    launch or a dispatcher trip on the training thread, per tensor and snapshot)."""
    if tensor.dim() == 1:
        return tensor  # concatenated as it is, strided or not
    if slot.packed_order is not None:
        # Dense in channels_last order (see _memory_order): its memory, read straight through.
        return tensor.as_strided((tensor.numel(),), (1,))
    return tensor.reshape(-1)


def _packed_dtype(tensor: Tensor) -> torch.dtype:
    if tensor.dtype == torch.int64:
        return torch.int64  # reinterpreted, not converted: an index above 2**24 stays exact
    if not torch.is_floating_point(tensor):
        raise TypeError(f"Cannot pack a {tensor.dtype} tensor; pack floating-point or int64 tensors.")
    return torch.float32


def _memory_order(tensor: Tensor) -> Optional[tuple[int, ...]]:
    """The dimension order in which ``tensor`` lies in memory, when it is channels_last."""
    if tensor.dim() == 4 and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last):
        return (0, 2, 3, 1)
    return None


def _packed_view(buffer: Tensor, slot: _Slot) -> Tensor:
    """The slot as packed: the tensor's dimensions in packing order."""
    flat = buffer[slot.offset : slot.offset + slot.length]
    if slot.dtype != torch.float32:
        flat = flat.view(slot.dtype)
    if slot.packed_order is None:
        return flat.view(slot.shape)
    return flat.view([slot.shape[dim] for dim in slot.packed_order])


def _slot_view(buffer: Tensor, slot: _Slot) -> Tensor:
    """The slot with the tensor's logical shape (a strided view when packed in memory order)."""
    packed = _packed_view(buffer, slot)
    if slot.packed_order is None:
        return packed
    return packed.permute([slot.packed_order.index(dim) for dim in range(len(slot.packed_order))])


def _to_host(packed: Tensor) -> tuple[Tensor, Optional[Any]]:
    if packed.device.type == "cpu":
        return packed, None
    if packed.device.type == "cuda":
        host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
        stream = torch.cuda.current_stream(packed.device)  # the copy's stream, whichever device is current
        host.copy_(packed, non_blocking=True)
        # Blocking: the writer thread sleeps until the copy lands instead of spinning on a core.
        event = torch.cuda.Event(blocking=True)
        event.record(stream)
        # ``packed`` is freed on return, but the caching allocator hands its memory out again
        # only to work queued after the copy on this stream, so the copy reads it intact.
        return host, event
    return packed.to("cpu"), None  # other accelerators: a plain, synchronous copy
