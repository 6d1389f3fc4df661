"""Reading the gradient each watched conv's filters got at one optimizer step.

GraMa (Liu et al. 2025, "Measure gradients, not activations!") judges a neuron by how much
gradient its weights get rather than by its activation: a filter whose weights get (almost)
no gradient is stuck, even when its activations are not zero. Per filter ``c`` the training
thread keeps the mean ``|dL/dW_c|``, one reduction per conv on the gradient's device, and
the next snapshot ships it with everything else (no host synchronization here); the writer
thread turns it into scores (see :func:`~lightning_filterviz.state.stats.grad_dormant_verdict`).

The gradients are read where the optimizer is about to apply them (Lightning's
``on_before_optimizer_step``): after AMP's gradient scaler has unscaled them, after every
micro-batch of gradient accumulation has added its part, and after DDP has averaged them
across ranks. A conv whose weight does not require grad gets nothing to read: it is frozen.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from lightning_filterviz.capture.conv_layers import ConvLayer

__all__ = ["gradient_magnitudes", "is_frozen", "trained_weight"]


def gradient_magnitudes(layers: Sequence[ConvLayer]) -> dict[str, Tensor]:
    """Per conv whose weight has a gradient now, each filter's mean ``|dL/dW_c|``, float32,
    ``(out_channels,)``, on the gradient's device (nothing is read on the host).

    Frozen convs, and convs that got no gradient at this step (not used in the loss), are
    left out: they have nothing to judge.
    """
    magnitudes = {}
    for layer in layers:
        weight = trained_weight(layer.module)
        if weight is None or not weight.requires_grad or weight.grad is None:
            continue
        gradient = weight.grad.detach()
        if gradient.is_sparse or gradient.dim() < 1 or gradient.shape[0] != layer.module.out_channels:
            continue  # not one slice per filter (a weight-norm magnitude has one, see trained_weight)
        magnitudes[layer.name] = gradient.abs().flatten(1).mean(dim=1, dtype=torch.float32)
    return magnitudes


def is_frozen(module: nn.Module) -> bool:
    """Whether the conv's weight is not trained: it does not require grad."""
    weight = trained_weight(module)
    return weight is not None and not weight.requires_grad


def trained_weight(module: nn.Module) -> Optional[Tensor]:
    """The parameter the optimizer updates for the conv's weight: the weight itself, or for a
    parametrized weight the stored tensor of the filters' full shape (weight norm's
    direction ``original1``, spectral norm's ``original``), whose gradient is per filter."""
    if not parametrize.is_parametrized(module, "weight"):
        weight = getattr(module, "weight", None)
        return weight if isinstance(weight, Tensor) else None
    stored = module.parametrizations["weight"]  # type: ignore[index]
    for name in ("original", "original1", "original0"):
        tensor = getattr(stored, name, None)
        if isinstance(tensor, Tensor):
            return tensor
    return None
