"""Leaving every buffer a forward can change exactly as it was.

A forward may write to its module's buffers in eval mode too: the fake-quant observers of
quantization-aware training record their minimum and maximum and recompute their scale and
zero point, and a user's module may count its calls or keep running statistics of its own.
Whatever the monitor runs of a model (the probe pass, the receptive-field measurement), it
runs inside :func:`untouched_buffers`, so that training goes on from the buffers the user's
own steps left, as in a run without the monitor.

Only tensors registered as buffers can be put back: a plain Python attribute a forward
changes (``self.calls = self.calls + 1`` on an int) is out of reach.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import Tensor, nn

__all__ = ["untouched_buffers"]

# Normalization modules whose eval-mode forward only reads their buffers (the running statistics):
# nothing to save there, which spares a ResNet its every buffer. Exact types only: a subclass may
# do more in its forward.
_READ_ONLY_IN_EVAL = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class _Slot:
    """One buffer as registered before the pass: the module, its name, the tensor itself and its
    shape (an observer resizes its buffers)."""

    __slots__ = ("module", "name", "tensor", "shape", "saved")

    def __init__(self, module: nn.Module, name: str, tensor: Tensor) -> None:
        self.module, self.name, self.tensor = module, name, tensor
        self.shape = tensor.shape
        self.saved: Optional[Tensor] = None


@contextlib.contextmanager
def untouched_buffers(model: nn.Module) -> Iterator[None]:
    """Put every buffer of ``model`` back as it was when the block began, also when it raises.

    A buffer the block reassigned is registered again; one it wrote to in place (through a
    fused kernel that does not bump its version counter too) gets its values back, on its
    device, by device-to-device copies: nothing is read on the host. The values are written
    back through ``.data``, so a buffer's version counter stays as the user's own forward left
    it (an autograd graph that saved it stays usable).

    Buffers of the normalization modules whose eval-mode forward only reads them (BatchNorm in
    eval mode) are not saved: their pass cannot change them.
    """
    slots = _slots_to_save(model)
    _save(slots)
    try:
        yield
    finally:
        _restore(slots)


def _slots_to_save(model: nn.Module) -> list[_Slot]:
    slots = []
    for module in model.modules():
        if not module._buffers or (type(module) in _READ_ONLY_IN_EVAL and not module.training):
            continue
        for name, tensor in module._buffers.items():
            # An inference tensor cannot be written to outside inference mode, so no pass changes it.
            if tensor is not None and not tensor.is_inference():
                slots.append(_Slot(module, name, tensor))
    return slots


def _save(slots: list[_Slot]) -> None:
    """A copy of every slot's values: one concatenation per device and dtype where the layout
    allows (one kernel rather than one per buffer), else a clone each."""
    groups: dict[tuple[torch.device, torch.dtype], list[_Slot]] = {}
    for slot in slots:
        tensor = slot.tensor
        if tensor.layout == torch.strided and not tensor.is_quantized:
            groups.setdefault((tensor.device, tensor.dtype), []).append(slot)
        else:
            slot.saved = tensor.detach().clone()
    for group in groups.values():
        flat = torch.cat([slot.tensor.detach().reshape(-1) for slot in group])
        for slot, part in zip(group, flat.split([slot.tensor.numel() for slot in group])):
            slot.saved = part.view(slot.shape)


def _restore(slots: list[_Slot]) -> None:
    targets, sources = [], []
    for slot in slots:
        buffers = slot.module._buffers  # a mapping without ``get`` in a TorchScript module
        if slot.name not in buffers or buffers[slot.name] is not slot.tensor:
            buffers[slot.name] = slot.tensor  # reassigned by the forward: the original is registered again
        if slot.tensor.shape != slot.shape:
            with torch.no_grad():
                slot.tensor.resize_(slot.shape)  # an observer resized it (per-channel statistics)
        targets.append(slot.tensor.data)
        sources.append(slot.saved)
    _copy_all(targets, sources)


def _copy_all(targets: list[Tensor], sources: list[Optional[Tensor]]) -> None:
    pairs = [(target, source) for target, source in zip(targets, sources) if source is not None]
    if not pairs:
        return
    foreach_copy = getattr(torch, "_foreach_copy_", None)
    plain = all(target.layout == torch.strided and not target.is_quantized for target, _ in pairs)
    with torch.no_grad():
        if foreach_copy is not None and plain:
            # Grouped by device and dtype inside: a few kernels for all buffers.
            foreach_copy([target for target, _ in pairs], [source for _, source in pairs])
            return
        for target, source in pairs:
            target.copy_(source)
