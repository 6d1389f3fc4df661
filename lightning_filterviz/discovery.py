"""Which conv layers to watch, and where each one's activation is observed.

The activation of a conv is the output of the first activation function applied
to that conv's output, through normalization layers, as the model really computes
it. Module hooks alone cannot see ``F.relu`` in a ``forward``, and a reused
``nn.ReLU`` fires once per call site, so the activation is found at run time
instead: a :class:`~torch.overrides.TorchFunctionMode` follows each conv's output
tensor through the torch functions that consume it, whichever way they are called
(module, functional, tensor method, in-place).
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

# ``torch.compile`` wraps a module in an ``OptimizedModule`` whose child is ``_orig_mod``.
COMPILED_PREFIX = "_orig_mod."

# Functions that keep a conv's output "the same signal" on its way to the activation.
_NORMALIZATIONS = frozenset(
    {"batch_norm", "group_norm", "layer_norm", "instance_norm", "local_response_norm", "rms_norm"}
)
_PASS_THROUGH = _NORMALIZATIONS | frozenset(
    {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "contiguous"}
)
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


@dataclass(frozen=True)
class ConvLayer:
    """A conv layer chosen for watching.

    Attributes:
        name: qualified name in the model's ``named_modules()``, without ``_orig_mod.``.
        module: the conv module itself.
    """

    name: str
    module: nn.Conv2d


def select_conv_layers(model: nn.Module, layers: Optional[Sequence[str]] = None) -> list[ConvLayer]:
    """Return the conv layers to watch, in the model's module order.

    Args:
        model: the network (a ``LightningModule`` or any ``nn.Module``).
        layers: module names or ``fnmatch`` patterns over ``named_modules()``; ``None``
            selects every ``nn.Conv2d``.

    Raises:
        ValueError: if a name or pattern matches no module, or matches only modules that
            are not ``nn.Conv2d``; the message lists the closest conv names.
    """
    modules = {_display_name(name): module for name, module in model.named_modules() if name}
    convs = {name: module for name, module in modules.items() if isinstance(module, nn.Conv2d)}
    if layers is None:
        return [ConvLayer(name, module) for name, module in convs.items()]

    chosen: set[str] = set()
    for requested in layers:
        requested = _display_name(requested)
        matched = [name for name in modules if name == requested or fnmatch.fnmatchcase(name, requested)]
        matched_convs = [name for name in matched if name in convs]
        if not matched_convs:
            raise ValueError(_unknown_layer_message(requested, matched, list(convs)))
        chosen.update(matched_convs)
    return [ConvLayer(name, module) for name, module in convs.items() if name in chosen]


def unsupported_conv_layers(model: nn.Module) -> list[str]:
    """Names of conv modules the monitor does not draw (1-d, 3-d and transposed convs)."""
    unsupported = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    return [_display_name(name) for name, module in model.named_modules() if isinstance(module, unsupported)]


def _display_name(name: str) -> str:
    return name.replace(COMPILED_PREFIX, "")


def _unknown_layer_message(requested: str, matched: list[str], conv_names: list[str]) -> str:
    if matched:
        problem = f"`layers` entry {requested!r} matches {matched[:3]} but none of them is an nn.Conv2d"
    else:
        problem = f"`layers` entry {requested!r} matches no module of the model"
    close = difflib.get_close_matches(requested, conv_names, n=3, cutoff=0.5) or conv_names[:3]
    hint = f" Did you mean one of {close}?" if close else " The model has no nn.Conv2d layer."
    return f"{problem}.{hint} Names come from `model.named_modules()`; fnmatch patterns such as 'features.*' work too."


@dataclass
class ActivationRecord:
    """What a conv's activation looked like during one probe pass.

    Attributes:
        function: name of the activation function (``"relu"``, ``"silu"``, ...).
        zeroing: whether the activation floors at zero (ReLU family), so that "dead" applies.
        channel_max: per-channel maximum over the batch and all positions, float32.
        channel_mean_abs: per-channel mean of absolute values, float32.
        maps: the first ``max_images`` x ``max_channels`` feature maps, float32, detached.
        peak_index: per channel, the flat index into ``(N, H, W)`` of its maximum.
        output_hw: the activation's spatial size ``(H, W)``.
    """

    function: str
    zeroing: bool
    channel_max: Tensor
    channel_mean_abs: Tensor
    maps: Tensor
    peak_index: Optional[Tensor] = None
    output_hw: Optional[tuple[int, int]] = None


class ActivationTracer(TorchFunctionMode):
    """Follows conv outputs through normalization to their activation during one forward.

    Register each watched conv's output with :meth:`track` (from a forward hook), run the
    forward inside ``with tracer:``, then read :attr:`records` and :attr:`no_activation`.
    Reductions happen inside the interception, so in-place activations that later get
    overwritten, and tensors that still hold autograd history, are never kept.

    Args:
        reduce_maps: turns an activation ``(N, C, H, W)`` into the small maps to keep;
            ``None`` keeps only the per-channel statistics (training-batch tracking).
        peak_layers: layers for which each channel's strongest position is recorded.
    """

    def __init__(
        self, reduce_maps: Optional[Callable[[Tensor], Tensor]] = None, peak_layers: Iterable[str] = ()
    ) -> None:
        super().__init__()
        self._reduce_maps = reduce_maps
        self._peak_layers = frozenset(peak_layers)
        # id(tensor) -> (layer name, tensor); the tensor is held so its id stays unique.
        self._tracked: dict[int, tuple[str, Tensor]] = {}
        self.records: dict[str, ActivationRecord] = {}
        self.no_activation: dict[str, str] = {}

    def track(self, layer: str, output: Tensor) -> None:
        self._tracked[id(output)] = (layer, output)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if not self._tracked or not isinstance(result, Tensor):
            return result  # metadata queries (size, dim, shape) consume nothing
        consumed = [self._tracked.pop(id(leaf)) for leaf in _tensor_leaves(args, kwargs) if id(leaf) in self._tracked]
        if consumed:
            self._follow(_function_name(func), args, kwargs, result, [layer for layer, _ in consumed])
        return result

    def finish(self) -> None:
        """Mark convs whose output was never consumed by a torch function."""
        for layer, _ in self._tracked.values():
            self.no_activation.setdefault(layer, "output is not consumed inside the model")
        self._tracked.clear()

    def _follow(self, name: str, args: tuple, kwargs: dict, result: Tensor, layers: list[str]) -> None:
        zeroing = _is_zeroing(name, args, kwargs)
        for layer in layers:
            if name in _PASS_THROUGH:
                self.track(layer, result)
            elif zeroing is not None:
                self._record(layer, name.rstrip("_"), zeroing, result)
            elif layer not in self.records:
                self.no_activation.setdefault(layer, f"output goes to `{name}` before any activation")

    def _record(self, layer: str, function: str, zeroing: bool, activation: Tensor) -> None:
        values = activation.detach()
        dims = [dim for dim in range(values.dim()) if dim != 1]
        # Statistics in float32 whatever the autocast dtype; amax is exact in any dtype.
        channel_max = values.amax(dim=dims).float()
        channel_mean_abs = values.abs().float().mean(dim=dims) if self._reduce_maps is not None else channel_max
        previous = self.records.get(layer)
        if previous is None:
            if self._reduce_maps is None:  # training-batch tracking: the maxima are all it needs
                self.records[layer] = ActivationRecord(function, zeroing, channel_max, channel_max, values.new_empty(0))
                return
            maps = self._reduce_maps(values.float())
            record = ActivationRecord(function, zeroing, channel_max, channel_mean_abs, maps)
            if values.dim() == 4 and layer in self._peak_layers:
                record.peak_index = values.transpose(0, 1).reshape(values.shape[1], -1).argmax(dim=1)
                record.output_hw = (values.shape[2], values.shape[3])
            self.records[layer] = record
            self.no_activation.pop(layer, None)
            return
        # A conv called several times per forward (weight sharing): statistics cover every call.
        previous.channel_max = torch.maximum(previous.channel_max, channel_max)
        previous.channel_mean_abs = (previous.channel_mean_abs + channel_mean_abs) / 2


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
