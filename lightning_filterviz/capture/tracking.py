"""Watching training forwards, so that a filter that fires on training data is not called dead.

For a conv whose ReLU-family activation has an :class:`~lightning_filterviz.capture.activations.ActivationTap`
(the conv, or the normalization module after it, returns exactly what the activation
consumes), a plain forward hook on the tap keeps a running per-channel maximum on the
device: two small kernels per layer and step, no host synchronization, no tracer. Only
convs without a tap (a functional normalization between conv and activation, a
``threshold`` activation, a module shared with other convs) are followed by the
:class:`~lightning_filterviz.capture.discovery.ActivationTracer`, which intercepts every torch
call of the forward and so costs more; the layer table says which.

The maxima stay on the device until the next snapshot ships them with everything else.
This code runs inside the user's training forward, so it never raises there: the first
failure switches tracking off for the rest of the run, with one warning, and snapshots
judge "dead" on the probe alone from then on.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

import torch
from lightning_utilities.core.rank_zero import rank_zero_warn
from torch import Tensor, nn

from lightning_filterviz.capture.activations import ActivationTap, ProbePlan
from lightning_filterviz.capture.conv_layers import ConvLayer
from lightning_filterviz.capture.discovery import ActivationTracer
from lightning_filterviz.capture.hook_guard import HookGuard

if TYPE_CHECKING:
    from lightning_filterviz.capture.probe_pass import ProbePass

__all__ = ["TrainingBatchWatch", "track_training_batch"]


class TrainingBatchWatch:
    """Watches training forwards for one engine until the first failure, which switches it
    off for good (a monitoring bug costs the tracking, never a training step).

    Attributes:
        stopped: tracking failed once and is off for the rest of the run.
    """

    def __init__(self) -> None:
        self.stopped = False

    @contextlib.contextmanager
    def watching(self, probe_pass: Callable[[], "ProbePass"], threshold: float) -> Iterator[None]:
        """Watch the forward run inside the block (see :func:`track_training_batch`);
        ``probe_pass`` gives the watched model's layers, plan and running maxima."""
        guard = HookGuard()
        found: Optional[ProbePass] = None
        with contextlib.ExitStack() as stack:
            if not self.stopped:
                with guard.catching():
                    found = probe_pass()
                    watch = track_training_batch(found.layers, found.plan, threshold, found.training_maxima, guard)
                    stack.enter_context(watch)
            yield
        if guard.failed and not self.stopped:
            self.stopped = True
            if found is not None:
                found.training_maxima.clear()  # possibly folded in part: judged on the probe alone
            rank_zero_warn(
                "filterviz: watching training batches failed, so they are not watched for the rest of this run; "
                f"dead filters are judged on the probe alone. Cause: {type(guard.error).__name__}: {guard.error}"
            )


@contextlib.contextmanager
def track_training_batch(
    layers: Sequence[ConvLayer],
    plan: Optional[ProbePlan],
    threshold: float,
    maxima: dict[str, Tensor],
    guard: HookGuard,
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
        guard: where a failure inside the forward is kept instead of raised (see
            :class:`~lightning_filterviz.capture.hook_guard.HookGuard`).
    """
    hooked, traced = _watch_plan(layers, plan, threshold)
    handles = []
    tracer = ActivationTracer(guard=guard) if traced else None
    try:
        for name, tap in hooked.items():
            handles.append(tap.module.register_forward_hook(guard.wrap(_running_maximum(name, maxima))))
        if tracer is not None:
            for layer in traced:
                handles.append(layer.module.register_forward_hook(guard.wrap(_tracer_feed(layer.name, tracer))))
        with tracer if tracer is not None else contextlib.nullcontext():
            yield
    finally:
        for handle in handles:
            handle.remove()
    if tracer is not None and not guard.failed:
        with guard.catching():
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
            tracer.track(name, output, tap=module)  # the module tells a fused conv with its own ReLU

    return hook


def _fold(maxima: dict[str, Tensor], name: str, new: Tensor) -> None:
    previous = maxima.get(name)
    if previous is None or previous.shape != new.shape:
        maxima[name] = new
    else:
        maxima[name] = torch.maximum(previous, new)
