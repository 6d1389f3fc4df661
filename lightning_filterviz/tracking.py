"""Watching training forwards, so that a filter that fires on training data is not called dead.

For a conv whose ReLU-family activation has an :class:`~lightning_filterviz.discovery.ActivationTap`
(the conv, or the normalization module after it, returns exactly what the activation
consumes), a plain forward hook on the tap keeps a running per-channel maximum on the
device: two small kernels per layer and step, no host synchronization, no tracer. Only
convs without a tap (a functional normalization between conv and activation, a
``threshold`` activation, a module shared with other convs) are followed by the
:class:`~lightning_filterviz.discovery.ActivationTracer`, which intercepts every torch
call of the forward and so costs more; the layer table says which.

The maxima stay on the device until the next snapshot ships them with everything else.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from lightning_filterviz.activations import ActivationTap, ProbePlan
from lightning_filterviz.discovery import ActivationTracer, ConvLayer

__all__ = ["track_training_batch"]


@contextlib.contextmanager
def track_training_batch(
    layers: Sequence[ConvLayer],
    plan: Optional[ProbePlan],
    threshold: float,
    maxima: dict[str, Tensor],
) -> Iterator[None]:
    """Fold each watched conv's per-channel activation maximum on one forward into ``maxima``.

    Args:
        layers: the watched convs.
        plan: how the first probe pass found each conv's activation; ``None`` before any
            probe pass, when every conv is traced.
        threshold: the dead threshold; a tap only decides for thresholds between its bounds.
        maxima: conv name -> running ``(out_channels,)`` maximum on the device; updated in place.
            For tapped convs it is the maximum of the activation's input, which exceeds
            ``threshold`` exactly where the activation's own maximum does.
    """
    hooked, traced = _watch_plan(layers, plan, threshold)
    handles = []
    tracer = ActivationTracer() if traced else None
    try:
        for name, tap in hooked.items():
            handles.append(tap.module.register_forward_hook(_running_maximum(name, maxima)))
        if tracer is not None:
            for layer in traced:
                handles.append(layer.module.register_forward_hook(_tracer_feed(layer.name, tracer)))
        with tracer if tracer is not None else contextlib.nullcontext():
            yield
    finally:
        for handle in handles:
            handle.remove()
    if tracer is not None:
        tracer.finish()
        for name, record in tracer.records.items():
            if record.zeroing and record.channel_max is not None:
                _fold(maxima, name, record.channel_max)


def _watch_plan(
    layers: Sequence[ConvLayer], plan: Optional[ProbePlan], threshold: float
) -> tuple[dict[str, ActivationTap], list[ConvLayer]]:
    """The convs a hook on their tap watches, and those the tracer must follow. A conv without
    a ReLU-family activation is neither: "dead" is not judged for it."""
    if plan is None:
        return {}, list(layers)
    hooked = {name: tap for name, tap in plan.taps.items() if tap.decides(threshold)}
    # The rest of the ReLU family is traced: a tap that cannot decide this threshold (ReLU6
    # at 6 or above, a threshold below the floor), an activation no module's output shows.
    traced = [layer for layer in layers if layer.name in plan.zeroing and layer.name not in hooked]
    return hooked, traced


def _running_maximum(name: str, maxima: dict[str, Tensor]) -> Callable[[nn.Module, Any, Any], None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, Tensor) and output.dim() >= 2:
            values = output.detach()
            _fold(maxima, name, values.amax(dim=[dim for dim in range(values.dim()) if dim != 1]))

    return hook


def _tracer_feed(name: str, tracer: ActivationTracer) -> Callable[[nn.Module, Any, Any], None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, Tensor):
            tracer.track(name, output)

    return hook


def _fold(maxima: dict[str, Tensor], name: str, new: Tensor) -> None:
    previous = maxima.get(name)
    if previous is None or previous.shape != new.shape:
        maxima[name] = new
    else:
        maxima[name] = torch.maximum(previous, new)
