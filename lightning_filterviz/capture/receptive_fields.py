"""Receptive fields measured by gradient: which input pixels one output position of a conv sees.

:func:`receptive_field` takes the gradient of a conv's output at a few positions w.r.t.
the input, so it works for any architecture (pools, strides, dilation, padding, ``F.*``
calls in ``forward``). During those backward passes a dispatch mode makes gates and max
pools pass the gradient to every input they could have passed it to, so the field is the
architecture's rather than this probe's.

The field is that of the conv's activation's positions, the ones its maps, peaks and
dataset examples are found at: where a pool, an upsampling or a padding sits between the
conv and its ReLU (``F.relu(F.max_pool2d(conv(x), 2))``), it is measured at the pooled
activation, found by the :class:`~lightning_filterviz.capture.discovery.ActivationTracer`.

Torch code, run on the training thread; the drawing of what a field covers lives in
:mod:`lightning_filterviz.drawing.responses`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_filterviz.capture.activations import ActivationRecorder
from lightning_filterviz.capture.discovery import ActivationTracer, moves_positions
from lightning_filterviz.capture.hook_guard import HookGuard
from lightning_filterviz.capture.probe_capture import ForwardFn, side_pass
from lightning_filterviz.core.records import ReceptiveField

__all__ = ["receptive_field"]

_aten = torch.ops.aten
# Backward ops of activations whose gradient is exactly zero on part of their domain.
_GATING_BACKWARDS = (
    _aten.threshold_backward,  # relu, threshold
    _aten.hardtanh_backward,  # relu6, hardtanh
    _aten.hardsigmoid_backward,
    _aten.hardswish_backward,
)

# The per-module hook tables of ``nn.Module`` (those missing in an older torch are skipped).
_HOOK_TABLES = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def receptive_field(
    model: nn.Module, inputs: Tensor, conv: nn.Module, forward_fn: Optional[ForwardFn] = None
) -> ReceptiveField:
    """Measure a conv's receptive field by the gradient of its output w.r.t. the input.

    The model runs once in eval mode on a copy of ``inputs[:1]`` that requires grad; the
    conv's output is taken with a temporary forward hook, and for three output positions
    near the centre (one diagonal step apart) the gradient of the sum over channels is
    taken w.r.t. the input only. The bounding box of the non-zero gradient gives the
    field; the step between boxes gives the stride.

    During those backward passes ReLU-family activations pass the gradient through
    unchanged and max pools spread it over their whole window, so neither dead units
    nor which element of a pool window won on this probe make the field smaller. The
    field is still measured with the model's current weights: a path whose gradient is
    zero anyway (weights or BatchNorm scales that are exactly zero, an adaptive max pool,
    a clamp) can make it smaller than the architectural one.

    Where the conv's activation comes after a per-channel pool, upsampling or padding, the
    positions are the activation's (see the module's docstring). A reentrant
    ``torch.utils.checkpoint`` (``use_reentrant=True``) runs its function without a graph,
    so for this one forward it runs the function directly, which is what it computes.

    No parameter's ``.grad`` is touched; every module's train/eval flag, the RNG state
    and the hooks are as they were afterwards.

    Args:
        model: the network.
        inputs: a batch of model inputs ``(N, C, H, W)`` on the model's device, large
            enough that the conv's output is at least 3x3 and the field of its centre
            does not cover the whole image.
        conv: the conv module (a submodule of ``model``) whose field to measure.
        forward_fn: how to run the model, ``forward_fn(model, x)``; default ``model(x)``.

    Returns:
        The conv's :class:`ReceptiveField`.

    Raises:
        ValueError: when the conv does not run on the probe, its output (or activation) is
            not ``(N, C, H, W)`` of at least 3x3, it does not depend on the input (autograd
            switched off inside the forward, say), or the field reaches past the image on both
            sides so it cannot be measured.
    """
    if not torch.is_tensor(inputs) or not torch.is_floating_point(inputs):
        raise ValueError("receptive_field needs a floating-point input tensor to differentiate w.r.t.")
    name = _module_name(model, conv)
    with side_pass(model, grad=True), torch.inference_mode(False), _reentrant_checkpoints_inline():
        # Non-finite pixels at 0: a NaN would turn every gradient it reaches into NaN.
        x = inputs[:1].detach().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).requires_grad_(True)
        centre, sums = _centre_sums(model, x, conv, forward_fn or _call_model, name)
        boxes = [_gradient_box(total, x, name) for total in sums]
    fields = [
        _axis_field([box[axis] for box in boxes], [box[axis + 2] for box in boxes], extent, centre[axis], name, label)
        for axis, extent, label in ((0, x.shape[-2], "height"), (1, x.shape[-1], "width"))
    ]
    return ReceptiveField(
        size=(fields[0][0], fields[1][0]), stride=(fields[0][1], fields[1][1]), offset=(fields[0][2], fields[1][2])
    )


# ---------------------------------------------------------------- the forward pass


def _call_model(model: nn.Module, x: Any) -> Any:
    return model(x)


def _centre_sums(
    model: nn.Module, x: Tensor, conv: nn.Module, run: ForwardFn, name: str
) -> tuple[tuple[int, int], list[Tensor]]:
    """Run the model on ``x`` once; the centre ``(cy, cx)`` of the conv's positions and, for
    the positions ``(cy + s, cx + s)``, ``s`` in -1, 0, 1, the sum over channels (still in
    the graph). The positions are the conv's output's, or its activation's where a pool, an
    upsampling or a padding comes between them.

    Raises:
        ValueError: the conv did not run, its output (or activation) is not ``(N, C, H, W)`` of
            at least 3x3, or autograd was off where it ran.
    """
    at_output: dict[str, Any] = {}
    at_activation = _CentreSums()
    tracer = ActivationTracer(at_activation, guard=HookGuard())  # a failure leaves the conv's output

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if at_output:  # a conv called twice: its first call
            return
        # Reduced now, before any in-place op (an inplace ReLU) can change the output, and
        # before the tracer follows it (the reductions would count as consuming it).
        at_output.update(_sums_at_centre(output))
        if isinstance(output, Tensor):
            tracer.track(name, output, tap=module)

    with _user_hooks_hidden(model):
        handle = conv.register_forward_hook(hook)
        try:
            with torch.enable_grad(), tracer:
                run(model, x)
        finally:
            handle.remove()
    tracer.finish()
    picked, where = at_output, "output"
    through = tracer.through.get(name, ())
    if at_activation.found and moves_positions(through):
        picked, where = at_activation.found, f"activation (after {', '.join(through)})"
    if not picked:
        raise ValueError(f"Conv {name!r} did not run on the probe, so its receptive field cannot be measured.")
    if "sums" not in picked:
        raise ValueError(
            f"Conv {name!r} gives an {where} of shape {picked['shape']} on a probe of shape "
            f"{tuple(x.shape)}; measuring its receptive field needs an (N, C, H, W) {where.split()[0]} of at "
            "least 3x3: use a larger input (unless a pool there has a fixed output size)."
        )
    if not picked["grad_enabled"]:
        raise ValueError(
            f"Conv {name!r} runs with autograd switched off inside the model's forward (a torch.no_grad block "
            "there), so its receptive field cannot be measured by gradient: it gets no peak patches and no "
            "dataset examples."
        )
    return picked["centre"], picked["sums"]


def _sums_at_centre(output: Any) -> dict[str, Any]:
    """The shape of ``output`` and, where it is ``(N, C, H, W)`` of at least 3x3, its centre and
    the sums over channels of the first image at the centre and one diagonal step either side."""
    found: dict[str, Any] = {"shape": tuple(output.shape) if isinstance(output, Tensor) else None}
    if isinstance(output, Tensor) and output.dim() == 4 and min(output.shape[-2:]) >= 3:
        cy, cx = output.shape[-2] // 2, output.shape[-1] // 2
        found["centre"] = (cy, cx)
        found["sums"] = [output[0, :, cy + step, cx + step].sum() for step in (-1, 0, 1)]
        found["grad_enabled"] = torch.is_grad_enabled()
    return found


class _CentreSums(ActivationRecorder):
    """An activation recorder that also keeps the centre sums of the first activation it is
    given (the tracer only follows the one conv being measured)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, Any] = {}

    def record(self, layer: str, function: str, zeroing: bool, activation: Tensor, nonnegative: bool = False) -> None:
        if not self.found:
            self.found = _sums_at_centre(activation)
        super().record(layer, function, zeroing, activation, nonnegative)


class _InlineCheckpoint:
    """Stands in for ``torch.utils.checkpoint.CheckpointFunction`` during a receptive-field
    forward: the function runs directly, in the graph, as a checkpoint's forward computes it
    (the reentrant one runs it with autograd off, and recomputes it only in a ``.backward()``)."""

    @staticmethod
    def apply(run_function: Any, preserve_rng_state: bool, *args: Any) -> Any:
        return run_function(*args)


@contextlib.contextmanager
def _reentrant_checkpoints_inline() -> Iterator[None]:
    """Reentrant checkpoints run their function directly for the duration. Only this side
    pass's one forward and backward on one image see it: the gradient is the same, and the
    activations kept for it are freed with the measurement."""
    original = getattr(torch.utils.checkpoint, "CheckpointFunction", None)
    if original is None:  # a torch without it: a reentrant checkpoint says so (see _centre_sums)
        yield
        return
    torch.utils.checkpoint.CheckpointFunction = _InlineCheckpoint  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        torch.utils.checkpoint.CheckpointFunction = original  # type: ignore[misc]


@contextlib.contextmanager
def _user_hooks_hidden(model: nn.Module) -> Iterator[None]:
    """The model's own module hooks out of the way for the duration, put back afterwards.

    The receptive field is a property of the architecture; this extra forward and backward
    must not look like a training or eval step to the user's hooks (counters, loggers,
    feature caches). Weights that hooks compute (old-style pruning and spectral norm) stay
    as their module's last forward left them.
    """
    saved = []
    for module in model.modules():
        for table in _HOOK_TABLES:
            hooks = getattr(module, table, None)
            if isinstance(hooks, dict) and hooks:
                saved.append((module, table, hooks))
                object.__setattr__(module, table, type(hooks)())
    try:
        yield
    finally:
        for module, table, hooks in saved:
            object.__setattr__(module, table, hooks)


def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next((name for name, candidate in model.named_modules() if candidate is module), type(module).__name__)


# ---------------------------------------------------------------- the backward passes


def _gradient_box(total: Tensor, x: Tensor, name: str) -> tuple[int, int, int, int]:
    """Bounding box ``(top, left, bottom, right)`` of the input pixels ``total`` depends on."""
    if not total.requires_grad:
        raise ValueError(f"The output of conv {name!r} does not depend on the input (it carries no gradient).")
    with _ArchitecturalBackward():
        (grad,) = torch.autograd.grad(total, x, retain_graph=True, allow_unused=True)
    if grad is None:
        raise ValueError(f"The output of conv {name!r} does not depend on the input.")
    reach = grad.detach().abs().sum(dim=(0, 1)) != 0
    rows, cols = torch.nonzero(reach.any(dim=1)).flatten(), torch.nonzero(reach.any(dim=0)).flatten()
    if len(rows) == 0:
        raise ValueError(
            f"The output of conv {name!r} has zero gradient w.r.t. every input pixel on this probe "
            "(zero weights or zero BatchNorm scales on every path)."
        )
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


class _ArchitecturalBackward(TorchDispatchMode):
    """Backward passes in which gates do not hide inputs.

    ReLU-family activations pass the gradient through wherever they are, and a max pool
    sends it to every element of its window rather than to the one that won.
    """

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in _GATING_BACKWARDS:
            return args[0].clone()
        if packet is _aten.max_pool2d_with_indices_backward:
            return _spread_pool_gradient(*args, **kwargs)
        return func(*args, **kwargs)


def _spread_pool_gradient(
    grad_output: Tensor,
    source: Tensor,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    ceil_mode: bool,
    indices: Tensor,
) -> Tensor:
    """A max pool's input gradient as if every window element had won."""
    kernel = _pair(kernel_size)
    step = _pair(stride) if len(stride) else kernel
    pad, spacing = _pair(padding), _pair(dilation)
    batched = grad_output.dim() == 4
    grad = grad_output if batched else grad_output[None]
    channels = grad.shape[1]
    ones = grad.new_ones(channels, 1, *kernel)
    spread = F.conv_transpose2d(grad, ones, stride=step, dilation=spacing, groups=channels)
    # Full transposed conv: index i + padding is input pixel i.
    spread = spread[..., pad[0] :, pad[1] :]
    height, width = source.shape[-2:]
    spread = spread[..., :height, :width]
    spread = F.pad(spread, (0, width - spread.shape[-1], 0, height - spread.shape[-2]))
    return spread if batched else spread[0]


def _pair(values: Any) -> tuple[int, int]:
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    return (int(values[0]), int(values[-1]))


# ---------------------------------------------------------------- from boxes to a field


def _axis_field(
    starts: list[int], ends: list[int], extent: int, centre: int, name: str, label: str
) -> tuple[int, int, int]:
    """Size, stride and offset along one axis from the boxes of positions ``centre - 1 .. centre + 1``.

    A start at 0 or an end at ``extent`` may be clipped by the image border; only unclipped
    edges are used.
    """
    before, middle, after = range(3)
    if starts[middle] > 0:
        stride = starts[after] - starts[middle]
    elif ends[middle] < extent:
        stride = ends[middle] - ends[before]
    else:
        stride = None
    if stride is not None and stride < 1:
        raise ValueError(
            f"Neighbouring outputs of conv {name!r} do not see inputs a whole number of pixels apart along "
            f"its {label} (an upsampling before it or before its activation?), so its receptive field is not a regular grid."
        )
    start: Optional[int] = starts[middle]
    end: Optional[int] = ends[middle]
    if start == 0:  # perhaps clipped: one step further in, the box is shifted by one stride
        start = starts[after] - stride if stride is not None and starts[after] > 0 else None
    if end == extent:
        end = ends[before] + stride if stride is not None and ends[before] < extent else None
    if stride is None or start is None or end is None:
        raise ValueError(
            f"The receptive field of conv {name!r} is too large for the probe's {label} ({extent} pixels) "
            "to be measured: use a larger input."
        )
    return end - start, stride, start - centre * stride
