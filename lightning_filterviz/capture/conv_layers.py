"""Which conv layers of a model to watch.

Every ``nn.Conv2d`` by default, or those that ``layers`` names (module names or ``fnmatch``
patterns); 1-d, 3-d and transposed convs are named apart, as the monitor does not draw them.
Names are those of ``named_modules()``, without the ``_orig_mod.`` that ``torch.compile``
puts in front.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn
from torch.ao.nn.intrinsic import qat as fused_qat
from torch.nn.parameter import is_lazy

from lightning_filterviz.core.layer_names import matches

__all__ = [
    "COMPILED_PREFIX",
    "ConvLayer",
    "has_compiled_module",
    "has_lazy_weights",
    "has_own_relu",
    "scripted_conv_layers",
    "select_conv_layers",
    "unsupported_conv_layers",
]

# ``torch.compile`` wraps a module in an ``OptimizedModule`` whose child is ``_orig_mod``.
COMPILED_PREFIX = "_orig_mod."


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
        matched = [name for name in modules if matches(name, requested)]
        matched_convs = [name for name in matched if name in convs]
        if not matched_convs:
            scripted = [name for name in matched if name in scripted_conv_layers(model)]
            raise ValueError(_unknown_layer_message(requested, matched, list(convs), scripted))
        chosen.update(matched_convs)
    return [ConvLayer(name, module) for name, module in convs.items() if name in chosen]


def unsupported_conv_layers(model: nn.Module) -> list[str]:
    """Names of conv modules the monitor does not draw (1-d, 3-d and transposed convs)."""
    unsupported = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    return [_display_name(name) for name, module in model.named_modules() if isinstance(module, unsupported)]


# Fused convs (quantization-aware training) that apply their ReLU inside their own forward:
# what the module returns is the activation. ``ConvBn2d`` has no ReLU, so it is not among them.
_CONVS_WITH_OWN_RELU = (fused_qat.ConvReLU2d, fused_qat.ConvBnReLU2d)


def has_own_relu(module: nn.Module) -> bool:
    """Whether ``module`` is a fused conv whose output is already its ReLU's (``torch.ao.nn.intrinsic.qat``
    ``ConvReLU2d`` and ``ConvBnReLU2d``, what ``prepare_qat`` makes of a fused conv and ReLU)."""
    return isinstance(module, _CONVS_WITH_OWN_RELU)


def scripted_conv_layers(model: nn.Module) -> list[str]:
    """Names of the convs inside TorchScript modules (``torch.jit.script`` or ``torch.jit.trace``),
    which the monitor cannot watch: a scripted module takes no Python hooks, and its forward
    runs no Python code a tracer could follow."""
    return [
        _display_name(name)
        for name, module in model.named_modules()
        if isinstance(module, torch.jit.ScriptModule) and getattr(module, "original_name", "") in _CONV_NAMES
    ]


# The class names a scripted conv keeps (``RecursiveScriptModule.original_name``).
_CONV_NAMES = frozenset({"Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"})


def has_lazy_weights(model: nn.Module) -> bool:
    """Whether some parameter of ``model`` has no shape yet (a lazy module before its first forward)."""
    return any(is_lazy(parameter) for parameter in model.parameters())


def has_compiled_module(model: nn.Module) -> bool:
    """Whether ``model`` holds a ``torch.compile``'d module."""
    return any(type(module).__name__ == "OptimizedModule" for module in model.modules())


def _display_name(name: str) -> str:
    return name.replace(COMPILED_PREFIX, "")


def _unknown_layer_message(requested: str, matched: list[str], conv_names: list[str], scripted: list[str]) -> str:
    if scripted:
        return (
            f"`layers` entry {requested!r} matches {scripted[:3]}, convs inside a TorchScript module "
            "(torch.jit.script or torch.jit.trace), which takes no Python hooks, so the monitor cannot watch "
            "them. Watch the module before scripting it, or name other conv layers."
        )
    if matched:
        problem = f"`layers` entry {requested!r} matches {matched[:3]} but none of them is an nn.Conv2d"
    else:
        problem = f"`layers` entry {requested!r} matches no module of the model"
    close = difflib.get_close_matches(requested, conv_names, n=3, cutoff=0.5) or conv_names[:3]
    hint = f" Did you mean one of {close}?" if close else " The model has no nn.Conv2d layer."
    return f"{problem}.{hint} Names come from `model.named_modules()`; fnmatch patterns such as 'features.*' work too."
