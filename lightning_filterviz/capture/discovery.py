"""Where each watched conv's activation is observed.

The activation of a conv is the output of the first activation function applied
to that conv's output, through normalization layers and per-channel operations
(pooling, upsampling, padding, dropout, a per-channel affine map), as the model
really computes it: with ``F.relu(F.max_pool2d(conv(x), 2))`` it is the pooled ReLU
output, and dead, dormant, the maps and the peaks are judged on that tensor. Module hooks alone cannot see ``F.relu`` in a ``forward``, and a reused
``nn.ReLU`` fires once per call site, so the activation is found at run time
instead: a :class:`~torch.overrides.TorchFunctionMode` follows each conv's output
tensor through the torch functions that consume it, whichever way they are called
(module, functional, tensor method, in-place).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from lightning_filterviz.capture.activations import ActivationRecord, ActivationRecorder, ActivationTap, ProbePlan
from lightning_filterviz.capture.conv_layers import has_own_relu
from lightning_filterviz.capture.hook_guard import HookGuard
from lightning_filterviz.core.records import PRE_ACTIVATION

__all__ = ["ActivationTracer", "NOT_RUN", "moves_positions"]

# Why a watched conv has no activation when it never ran.
NOT_RUN = "the conv did not run on the probe"

# Functions that keep a conv's output "the same signal" on its way to the activation.
_NORMALIZATIONS = frozenset(
    {"batch_norm", "group_norm", "layer_norm", "instance_norm", "local_response_norm", "rms_norm"}
)
_PASS_THROUGH = _NORMALIZATIONS | frozenset(
    {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "contiguous"}
)
# Per-channel operations that move or merge positions, each channel on its own: followed, and
# named in the layer table, since the activation then has other positions than the conv's output.
_POSITIONAL = frozenset(
    {
        "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
        "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
        "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
        "interpolate", "upsample", "upsample_nearest", "upsample_bilinear", "pad",
    }
)
# Those of them that return ``(values, indices)`` (``return_indices=True``): the values are followed.
_WITH_INDICES = frozenset(
    {"max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
     "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices", "adaptive_max_pool3d_with_indices"}
)
# Elementwise arithmetic that, by a number or a per-channel constant, keeps a conv's output
# "the same signal" (an affine map per channel: FrozenBatchNorm2d's ``x * scale + bias``).
_AFFINE = frozenset(
    {"mul", "mul_", "__rmul__", "add", "add_", "__radd__", "sub", "sub_", "__rsub__", "rsub", "neg", "neg_"}
)
# Functions whose first argument is the data flowing through the model.
_DATA_CONSUMERS = frozenset({"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d"})
# Functions whose values come from their first argument alone, the others lending a dtype or shape ...
_VALUES_FROM_FIRST = frozenset({"to", "type_as", "expand_as", "view_as", "reshape_as"})
# ... and those whose values come from no tensor argument at all.
_TEMPLATED = frozenset({
    "new_tensor", "new_zeros", "new_ones", "new_full", "new_empty",
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like",
})
_DIVISIONS = frozenset({"div", "div_", "true_divide", "true_divide_"})  # affine only with the output on top
# Activations whose "off" state is an exact floor at zero: only these can make a filter dead.
_ZEROING_ACTIVATIONS = frozenset({"relu", "relu_", "relu6", "threshold", "threshold_"})
# ``nn.ReLU6`` calls ``hardtanh(x, 0, 6)``: zeroing only when its lower bound is 0 or more.
_HARDTANH = frozenset({"hardtanh", "hardtanh_"})
_OTHER_ACTIVATIONS = frozenset(
    {
        "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "selu_", "celu", "celu_", "gelu",
        "silu", "mish", "hardswish", "hardsigmoid", "sigmoid", "sigmoid_", "tanh", "tanh_",
        "softplus", "prelu", "rrelu", "rrelu_", "glu", "logsigmoid", "softsign", "tanhshrink",
    }
)


@dataclass
class _Tracked:
    layer: str
    tensor: Tensor  # held so that its id() stays unique while tracked
    tap: Optional[nn.Module] = None
    through: tuple[str, ...] = ()  # the arithmetic followed on the way (not normalization layers)


class ActivationTracer(TorchFunctionMode):
    """Follows conv outputs through normalization to their activation during one forward.

    Register each watched conv's output with :meth:`track` (from a forward hook), run the
    forward inside ``with tracer:``, then read :attr:`records` and :attr:`no_activation`.
    Reductions happen inside the interception, so in-place activations that later get
    overwritten, and tensors that still hold autograd history, are never kept.

    To find each conv's :class:`ActivationTap` as well, call :meth:`note_module_output`
    from a forward hook on every module of the model, then read :meth:`taps`.

    Args:
        recorder: where the activations found are reduced and kept; by default one that
            keeps only the per-channel maxima (training-batch tracking).
        guard: where a failure of the following is kept instead of raised into the forward
            (which then runs on unwatched); ``None`` raises it.
    """

    def __init__(self, recorder: Optional[ActivationRecorder] = None, guard: Optional[HookGuard] = None) -> None:
        super().__init__()
        self.recorder = recorder if recorder is not None else ActivationRecorder()
        self._guard = guard
        self._tracked: dict[int, _Tracked] = {}
        self.no_activation: dict[str, str] = {}
        # Per conv, the arithmetic followed between it and its activation (for the layer table).
        self.through: dict[str, tuple[str, ...]] = {}
        # For taps: per layer, the module in front of its activation at each call, and its bounds.
        self._taps_seen: dict[str, list[Optional[nn.Module]]] = {}
        self._bounds: dict[str, Optional[tuple[str, float, float]]] = {}
        self._module_calls: dict[int, int] = {}
        # Tensors computed from the data (a conv's input or output, and whatever follows from
        # them), by id: a per-channel operand among them is a residual or an attention map, never
        # a normalization's constant, whatever the batch and spatial sizes.
        self._from_data: dict[int, weakref.ref[Tensor]] = {}

    @property
    def records(self) -> dict[str, ActivationRecord]:
        """Conv name -> its activation, for the convs whose activation was found."""
        return self.recorder.records

    def track(self, layer: str, output: Tensor, tap: Optional[nn.Module] = None, through: tuple[str, ...] = ()) -> None:
        """Follow ``output`` of conv ``layer`` from here; ``tap`` is the module that returned it
        (the conv itself, from its forward hook), ``through`` what was followed to reach it."""
        self._note_from_data(output)
        if tap is not None and has_own_relu(tap):
            self._record_fused_relu(layer, output, tap)
            return
        self._tracked[id(output)] = _Tracked(layer, output, tap, through)

    def _record_fused_relu(self, layer: str, output: Tensor, module: nn.Module) -> None:
        """A fused conv with its own ReLU (quantization-aware training) returns the activation
        itself: it is recorded as such, the module is its tap, and nothing is followed further."""
        self.through[layer] = (f"fused {type(module).__name__}",)
        self.recorder.record(layer, "relu", True, output, nonnegative=True)
        self.no_activation.pop(layer, None)
        self._taps_seen.setdefault(layer, []).append(module)
        tap_kind = ("relu", 0.0, math.inf)
        self._bounds[layer] = tap_kind if self._bounds.get(layer, tap_kind) == tap_kind else None

    def note_module_output(self, module: nn.Module, output: Any) -> None:
        """Note that ``module`` returned ``output``: the innermost module returning a tracked
        tensor is where a hook can see that tensor."""
        self._module_calls[id(module)] = self._module_calls.get(id(module), 0) + 1
        entry = self._tracked.get(id(output)) if isinstance(output, Tensor) else None
        if entry is not None and entry.tap is None:
            entry.tap = module

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        if self._guard is not None and self._guard.failed:
            return func(*args, **kwargs)  # following failed: the forward runs as if unwatched
        name = _function_name(func)
        leaves = list(_tensor_leaves(args, kwargs))
        try:  # (a try, not a context manager: this runs for every torch call of the forward)
            self._before_call(name, args, kwargs, leaves)
        except Exception as error:
            self._keep_or_raise(error)
        result = func(*args, **kwargs)
        values = result
        if name in _WITH_INDICES and isinstance(result, tuple) and result:
            values = result[0]  # a pool's (values, indices): the values go on to the activation
        if isinstance(values, Tensor):  # metadata queries (size, dim, shape) consume nothing
            try:
                self._after_call(name, args, kwargs, leaves, values)
            except Exception as error:
                self._keep_or_raise(error)
        return result

    def _keep_or_raise(self, error: Exception) -> None:
        if self._guard is None:
            raise error
        self._guard.keep(error)

    def _before_call(self, name: str, args: tuple, kwargs: dict, leaves: list[Tensor]) -> None:
        if name in _DATA_CONSUMERS and leaves:
            self._note_from_data(leaves[0])  # a conv's input is data, the model input too
        if self._tracked and _is_in_place(name):
            # Before the call: an in-place residual sum (``out += identity``) overwrites the
            # output it ends, and that output is what a conv without an activation shows.
            ending = [self._tracked[id(leaf)] for leaf in leaves if id(leaf) in self._tracked]
            if ending:
                self._record_pre_activations(name, args, kwargs, ending)

    def _after_call(self, name: str, args: tuple, kwargs: dict, leaves: list[Tensor], result: Tensor) -> None:
        if self._carries_data(name, leaves):
            self._note_from_data(result)
        if not self._tracked:
            return
        consumed = [self._tracked.pop(id(leaf)) for leaf in leaves if id(leaf) in self._tracked]
        if consumed:
            self._follow(name, args, kwargs, result, consumed)

    def finish(self) -> None:
        """Mark convs whose output was never consumed by a torch function."""
        for entry in self._tracked.values():
            self.no_activation.setdefault(entry.layer, "output is not consumed inside the model")
        self._tracked.clear()

    def plan(self, layers: Sequence[str]) -> ProbePlan:
        """What this forward found, as a plan for the next ones (see :class:`ProbePlan`).

        Only complete after a forward in which :meth:`note_module_output` saw every module.
        """
        taps = self._taps()
        zeroing = frozenset(name for name in layers if name in self.records and self.records[name].zeroing)
        plan = ProbePlan(taps=taps, through={layer: ops for layer, ops in self.through.items() if ops}, zeroing=zeroing)
        for name in layers:
            record = self.records.get(name)
            if record is None or record.function == PRE_ACTIVATION:
                plan.no_activation[name] = self.no_activation.get(name, NOT_RUN)
            if record is not None and name not in taps:
                plan.traced.append(name)
        return plan

    def _taps(self) -> dict[str, ActivationTap]:
        """Per conv with a ReLU-family activation, the module a hook can watch instead of tracing.

        A conv has a tap when, at every call, one and the same module returned exactly the
        tensor its activation consumed, that module ran only for this conv, and the
        activation is the identity between two bounds. Only meaningful after a forward in
        which :meth:`note_module_output` saw every module.
        """
        taps: dict[str, ActivationTap] = {}
        claimed: dict[int, int] = {}
        for layer, seen in self._taps_seen.items():
            bounds = self._bounds.get(layer)
            modules = {id(module) for module in seen}
            if bounds is None or None in seen or len(modules) != 1:
                continue
            module = seen[0]
            assert module is not None
            if self._module_calls.get(id(module), 0) != len(seen):
                continue  # the module also runs for something else: its hook would see that too
            taps[layer] = ActivationTap(module, *bounds)
            claimed[id(module)] = claimed.get(id(module), 0) + 1
        return {layer: tap for layer, tap in taps.items() if claimed[id(tap.module)] == 1}

    def _note_from_data(self, tensor: Tensor) -> None:
        self._from_data[id(tensor)] = weakref.ref(tensor)

    def _carries_data(self, name: str, leaves: list[Tensor]) -> bool:
        """Whether the result of ``name`` on ``leaves`` holds values computed from the data. A
        tensor that only lends its dtype, device or shape (``gamma.type_as(x)``,
        ``torch.zeros_like(x)``) passes none on."""
        if name in _TEMPLATED:
            return False
        if name in _VALUES_FROM_FIRST:
            return bool(leaves) and self._is_from_data(leaves[0])
        return any(self._is_from_data(leaf) for leaf in leaves)

    def _is_from_data(self, tensor: Tensor) -> bool:
        # By id, and the very object: an id is reused once its tensor is freed.
        noted = self._from_data.get(id(tensor))
        return noted is not None and noted() is tensor

    def _record_pre_activations(self, name: str, args: tuple, kwargs: dict, consumed: list[_Tracked]) -> None:
        """Record the output of each conv whose way to an activation ends at ``name`` (a
        residual sum, a concatenation): signed, so "dead" does not apply to it."""
        if _is_zeroing(name, args, kwargs) is not None:
            return
        for entry in consumed:
            followed = name in _PASS_THROUGH or _is_channel_affine(name, args, entry.tensor, self._is_from_data)
            if followed or entry.layer in self.records:
                continue
            self.through[entry.layer] = entry.through
            self.recorder.record(entry.layer, PRE_ACTIVATION, False, entry.tensor)
            self._taps_seen.setdefault(entry.layer, []).append(entry.tap)
            tap_kind = (PRE_ACTIVATION, float("-inf"), float("inf"))
            self._bounds[entry.layer] = tap_kind if self._bounds.get(entry.layer, tap_kind) == tap_kind else None

    def _follow(self, name: str, args: tuple, kwargs: dict, result: Tensor, consumed: list[_Tracked]) -> None:
        zeroing = _is_zeroing(name, args, kwargs)
        for entry in consumed:
            layer = entry.layer
            positional = _positional_label(name, args, kwargs, entry.tensor)
            if name in _PASS_THROUGH:
                self.track(layer, result, through=entry.through)
            elif positional is not None:
                self.track(layer, result, through=entry.through + (positional,))
            elif _is_channel_affine(name, args, entry.tensor, self._is_from_data):
                self.track(layer, result, through=entry.through + (name.strip("_").removeprefix("r"),))
            elif zeroing is not None:
                self.through[layer] = entry.through
                function = name.rstrip("_")
                bounds = _identity_bounds(name, args, kwargs) if zeroing else None
                nonnegative = bounds is not None and bounds[0] >= 0
                self.recorder.record(layer, function, zeroing, result, nonnegative=nonnegative)
                self.no_activation.pop(layer, None)
                if bounds is not None:
                    self._taps_seen.setdefault(layer, []).append(entry.tap)
                    tap_kind = (function, *bounds)
                    self._bounds[layer] = tap_kind if self._bounds.get(layer, tap_kind) == tap_kind else None
            elif layer not in self.records or self.records[layer].function == PRE_ACTIVATION:
                self._record_pre_activations(name, args, kwargs, [entry])  # intact: the call was not in place
                self.no_activation.setdefault(layer, _not_followed_reason(name, args, kwargs))


def moves_positions(through: Sequence[str]) -> bool:
    """Whether what was followed between a conv and its activation (:attr:`ActivationTracer.through`)
    pools, resamples or pads it, so that the activation's positions are not the conv output's."""
    return any(step in _POSITIONAL for step in through)


def _positional_label(name: str, args: tuple, kwargs: dict, tracked: Tensor) -> Optional[str]:
    """The name a per-channel pooling, resampling or padding of ``tracked`` is listed under
    in the layer table, or ``None`` when ``name(*args)`` is none of them.

    Each channel of the result comes from the same channel of ``tracked`` alone, so the
    activation after it is still the conv's, filter by filter; "dead" and "dormant" are
    judged on that activation as the model computes it (pooled, resampled, padded). A
    constant padding with a fill above zero is not followed: the ReLU would fire on the
    fill, on positions the conv never produced.
    """
    base = name.removesuffix("_with_indices")
    if base not in _POSITIONAL or not args or args[0] is not tracked:
        return None
    if base == "pad" and _padding_fill(args, kwargs) > 0:
        return None
    return base


def _padding_fill(args: tuple, kwargs: dict) -> float:
    """The fill value of ``F.pad(x, pad, mode, value)``; 0 for the modes that copy values."""
    mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
    value = args[3] if len(args) > 3 else kwargs.get("value")
    return float(value) if mode == "constant" and value is not None else 0.0


def _not_followed_reason(name: str, args: tuple, kwargs: dict) -> str:
    if name == "pad":
        return (
            f"output goes to `pad` with the fill value {_padding_fill(args, kwargs):g} before any activation "
            "(a fill above zero makes the ReLU fire where the conv has no output, so it is not followed)"
        )
    return f"output goes to `{name}` before any activation"


def _is_in_place(name: str) -> bool:
    """``add_``, ``relu_``, ``__iadd__``: functions that write into their first argument."""
    return (name.endswith("_") and not name.endswith("__")) or name.startswith("__i")


def _is_zeroing(name: str, args: tuple, kwargs: dict) -> Optional[bool]:
    """True for a ReLU-family activation, False for another activation, None for no activation."""
    if name in _ZEROING_ACTIVATIONS:
        return True
    if name in _HARDTANH:
        min_val = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
        return float(min_val) >= 0.0
    if name in _OTHER_ACTIVATIONS:
        return False
    return None


def _is_channel_affine(name: str, args: tuple, tracked: Tensor, from_data: Callable[[Tensor], bool]) -> bool:
    """Whether ``name(*args)`` maps ``tracked`` affinely, by a number or a per-channel constant
    (one not computed from the data, see ``from_data``)."""
    if name in ("neg", "neg_"):
        return True
    if name not in _AFFINE and name not in _DIVISIONS or len(args) < 2:
        return False
    if name in _DIVISIONS and args[0] is not tracked:
        return False
    other = args[1] if args[0] is tracked else args[0]
    if isinstance(other, (int, float)) and not isinstance(other, bool):
        return True
    return isinstance(other, Tensor) and not from_data(other) and _per_channel(other, tracked)


def _per_channel(constant: Tensor, tracked: Tensor) -> bool:
    """Whether ``constant`` broadcasts over ``tracked`` (N, C, ...) with one value per channel at most."""
    if tracked.dim() < 2 or constant.dim() > tracked.dim():
        return False
    shape = (1,) * (tracked.dim() - constant.dim()) + tuple(constant.shape)
    return shape[1] in (1, tracked.shape[1]) and all(size == 1 for axis, size in enumerate(shape) if axis != 1)


def _identity_bounds(name: str, args: tuple, kwargs: dict) -> Optional[tuple[float, float]]:
    """``(floor, ceiling)`` of a ReLU-family activation that is the identity in between; else ``None``."""
    if name in ("relu", "relu_"):
        return (0.0, math.inf)
    if name == "relu6":
        return (0.0, 6.0)
    if name in _HARDTANH:
        min_val = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
        max_val = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
        return (float(min_val), float(max_val))
    return None  # threshold(x, t, value) replaces rather than clips: only the tracer can tell


def _function_name(func: Any) -> str:
    return getattr(func, "__name__", type(func).__name__)


def _tensor_leaves(*containers: Any) -> Iterable[Tensor]:
    """Tensors among a call's arguments, looking inside lists, tuples and dicts (``torch.cat``)."""
    for item in containers:
        if isinstance(item, Tensor):
            yield item
        elif isinstance(item, (list, tuple)):
            yield from _tensor_leaves(*item)
        elif isinstance(item, dict):
            yield from _tensor_leaves(*item.values())
