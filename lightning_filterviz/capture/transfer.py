"""One copy per snapshot from the accelerator to host memory.

Each ``.cpu()`` of a CUDA tensor waits for all the GPU work queued before it; one per layer
and statistic costs a snapshot tens of milliseconds. Instead, every tensor a snapshot
needs is packed on its device into one buffer of bytes, by one concatenation per dtype
(a concatenation of tensors of one dtype into their own dtype is one kernel on a GPU;
mixed, it is one copy per tensor), copied once with ``non_blocking=True`` into pinned host
memory, and followed by a CUDA event. The training thread goes on at once; whoever reads
the values (the writer thread) waits on the event first, and only then converts
half-precision values to float32 and moves them out of the pinned memory, which the next
snapshot's copy then reuses.

On the CPU nothing needs to travel, so nothing is packed: each tensor is copied on its
own (which detaches the values from the live weights that the optimizer goes on changing;
one large fresh buffer would cost more in page faults than the copies themselves), and
tensors computed for the snapshot alone (statistics, reduced maps), which nothing writes
to again, are handed on as they are.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

__all__ = ["HostBuffer", "TransferPacker"]


@dataclass(frozen=True)
class _Slot:
    owner: Any
    field: str
    start: int  # in bytes
    shape: tuple[int, ...]
    dtype: torch.dtype  # the tensor's own, in which it is packed
    # The order the tensor's dimensions were packed in (its memory order), when not the logical one.
    packed_order: Optional[tuple[int, ...]] = None

    @property
    def end(self) -> int:
        return self.start + math.prod(self.shape) * self.dtype.itemsize


class HostBuffer:
    """Host copies of the packed tensors, readable once :meth:`wait` has returned.

    Args:
        buffers: per device, the host buffer of bytes its tensors were copied into.
        slots: where each tensor lies in its device's buffer.
        events: per device, the CUDA event recorded after its copy (none on the CPU).
        kept: ``(owner, field, tensor)`` for CPU tensors, copied on their own or handed on.
    """

    def __init__(
        self,
        buffers: dict[torch.device, Tensor],
        slots: dict[torch.device, list[_Slot]],
        events: dict[torch.device, Any],
        kept: Optional[list[tuple[Any, str, Tensor]]] = None,
    ):
        self._buffers = buffers
        self._slots = slots
        self._events = events
        self._kept = kept or []

    def wait(self) -> None:
        """Block until every copy into host memory has completed (at once on the CPU).

        The values then move out of pinned memory: a snapshot its caller keeps would
        otherwise hold a block of it each, and every later copy would pin new memory, which
        makes the whole GPU wait."""
        for device, event in self._events.items():
            event.synchronize()
            pinned = self._buffers[device]
            self._buffers[device] = torch.empty(pinned.shape, dtype=pinned.dtype, device="cpu").copy_(pinned)
        self._events = {}

    def views(self) -> list[tuple[Any, str, Tensor]]:
        """``(owner, field, tensor)`` for every shipped tensor, once :meth:`wait` has returned:
        views into the host buffers (floating-point ones in float32), and the CPU tensors,
        copied on their own or handed on (see :meth:`TransferPacker.add`)."""
        unpacked = list(self._kept)
        for device, slots in self._slots.items():
            unpacked += [(slot.owner, slot.field, _slot_view(self._buffers[device], slot)) for slot in slots]
        return unpacked


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
        dtype = _arriving_dtype(tensor)
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
        return any(o == owner and f == field for o, f, _ in entries)

    def ship(self) -> HostBuffer:
        """Pack each device's tensors into one buffer and start its copy to host memory."""
        buffers: dict[torch.device, Tensor] = {}
        slots: dict[torch.device, list[_Slot]] = {}
        events = {}
        for device, entries in self._pending.items():
            # The widest dtypes first, each dtype together: every slot then starts on a
            # multiple of its element size, as a view in its dtype needs.
            entries.sort(key=lambda entry: (-entry[2].dtype.itemsize, str(entry[2].dtype)))
            device_slots, start = [], 0
            for owner, field, tensor in entries:
                slot = _Slot(owner, field, start, tuple(tensor.shape), tensor.dtype, _memory_order(tensor))
                device_slots.append(slot)
                start = slot.end
            buffers[device], event = _to_host(_packed(entries, device_slots, start, device))
            slots[device] = device_slots
            if event is not None:
                events[device] = event
        kept, self._pending, self._kept = self._kept, {}, []
        return HostBuffer(buffers, slots, events, kept)


def _packed(entries: list[tuple[Any, str, Tensor]], slots: list[_Slot], size: int, device: torch.device) -> Tensor:
    """One buffer of ``size`` bytes holding each tensor in its slot, in the tensor's own
    memory order (a channels_last weight is copied as it lies, not transposed). Being a copy,
    later in-place updates of the weights do not leak in."""
    packed = torch.empty(size, dtype=torch.uint8, device=device)
    flat = [_flattened(tensor, slot) for slot, (_, _, tensor) in zip(slots, entries)]
    with torch.no_grad():  # the weights still require grad here; nothing is to be recorded
        for dtype, group in itertools.groupby(zip(slots, flat), key=lambda pair: pair[0].dtype):
            same_dtype = list(group)
            start, end = same_dtype[0][0].start, same_dtype[-1][0].end
            torch.cat([tensor for _, tensor in same_dtype], out=packed[start:end].view(dtype))
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


def _arriving_dtype(tensor: Tensor) -> torch.dtype:
    """The dtype ``tensor`` comes back in."""
    if tensor.dtype == torch.int64:
        return torch.int64  # an index above 2**24 stays exact
    if not torch.is_floating_point(tensor):
        raise TypeError(f"Cannot pack a {tensor.dtype} tensor; pack floating-point or int64 tensors.")
    return torch.float32


def _memory_order(tensor: Tensor) -> Optional[tuple[int, ...]]:
    """The dimension order in which ``tensor`` lies in memory, when it is channels_last."""
    if tensor.dim() == 4 and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last):
        return (0, 2, 3, 1)
    return None


def _slot_view(buffer: Tensor, slot: _Slot) -> Tensor:
    """The slot with the tensor's logical shape (a strided view when packed in memory order),
    in float32 if it is of another floating-point dtype (then a copy)."""
    flat = buffer[slot.start : slot.end].view(slot.dtype)
    if slot.packed_order is None:
        view = flat.view(slot.shape)
    else:
        packed = flat.view([slot.shape[dim] for dim in slot.packed_order])
        view = packed.permute([slot.packed_order.index(dim) for dim in range(len(slot.packed_order))])
    return view if slot.dtype == _arriving_dtype(view) else view.float()


def _to_host(packed: Tensor) -> tuple[Tensor, Optional[Any]]:
    if packed.device.type == "cpu":
        return packed, None
    if packed.device.type == "cuda":
        host = torch.empty(packed.shape, dtype=packed.dtype, device="cpu", pin_memory=True)
        stream = torch.cuda.current_stream(packed.device)  # the copy's stream, whichever device is current
        host.copy_(packed, non_blocking=True)
        # Blocking: the writer thread sleeps until the copy lands instead of spinning on a core.
        event = torch.cuda.Event(blocking=True)
        event.record(stream)
        # ``packed`` is freed on return, but the caching allocator hands its memory out again
        # only to work queued after the copy on this stream, so the copy reads it intact.
        return host, event
    return packed.to("cpu"), None  # other accelerators: a plain, synchronous copy
