"""Dead-filter statistics and their persistence over snapshots.

They run on the writer thread (with ``background=True``) in torch, on per-channel vectors
small enough that torch runs them on the calling thread alone (below its parallel grain
size), so they start no second OpenMP team beside training.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from lightning_filterviz.core.records import CapturedSnapshot

__all__ = ["DeadFilterTracker", "dormant_indices", "dormant_scores"]


class DeadFilterTracker:
    """Counts, per filter, the consecutive snapshots in which its ReLU output stayed off.

    A filter is *off* at a snapshot when every value of its channel over the probe batch
    and all positions is ``<= threshold``; it is *dead* once it has been off for
    ``patience`` consecutive snapshots. Only convs followed by a ReLU-family activation
    are judged: other activations never floor at zero, so "dead" does not apply to them.

    Args:
        threshold: a post-activation value ``<= threshold`` counts as off.
        patience: consecutive off snapshots before a filter is reported dead.

    Example::

        tracker = DeadFilterTracker(threshold=0.0, patience=2)
        tracker.update(snapshot)
        tracker.dead_filters  # {"features.0": [3, 7]}
    """

    def __init__(self, threshold: float = 0.0, patience: int = 2) -> None:
        self.threshold = threshold
        self.patience = patience
        self._off_streak: dict[str, Tensor] = {}

    def update(self, snapshot: CapturedSnapshot) -> None:
        """Fold one snapshot into the streaks.

        A filter is off when its activation stayed ``<= threshold`` on the probe and, where
        training batches were watched (``training_max``), on every one of them.
        """
        for name, layer in snapshot.layers.items():
            if not layer.zeroing or layer.channel_max is None:
                continue
            off = layer.channel_max <= self.threshold
            if layer.training_max is not None and layer.training_max.shape == off.shape:
                off = off & ~(layer.training_max > self.threshold)
            streak = self._off_streak.get(name)
            if streak is None or streak.shape != off.shape:
                streak = torch.zeros(off.shape, dtype=torch.long)
            self._off_streak[name] = torch.where(off, streak + 1, torch.zeros_like(streak))

    @property
    def judged_layers(self) -> list[str]:
        """Layers for which dead filters are tracked (those with a ReLU-family activation)."""
        return list(self._off_streak)

    @property
    def dead_filters(self) -> dict[str, list[int]]:
        """Conv name -> sorted output-channel indices now dead, for every judged layer."""
        return {name: self.dead_indices(name) for name in self._off_streak}

    def dead_indices(self, layer: str) -> list[int]:
        streak = self._off_streak.get(layer)
        if streak is None:
            return []
        return torch.nonzero(streak >= self.patience).flatten().tolist()

    def dead_fraction(self, layer: str) -> float:
        streak = self._off_streak[layer]
        return len(self.dead_indices(layer)) / max(1, streak.numel())

    def state_dict(self) -> dict[str, Any]:
        return {"off_streak": {name: streak.clone() for name, streak in self._off_streak.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._off_streak = {name: streak.clone().long() for name, streak in state.get("off_streak", {}).items()}


def dormant_scores(channel_mean_abs: Tensor) -> Tensor:
    """ReDo's score (Sokar et al. 2023): each channel's mean ``|h|`` over the layer's average.

    A layer whose channels are all zero scores 0 everywhere (every filter dormant) rather
    than dividing by zero. A channel without a single finite value on the probe (its mean is
    NaN, see the probe pass) scores NaN, so it is never dormant, and is left out of the
    layer's average.
    """
    layer_mean = channel_mean_abs.nanmean()
    if layer_mean <= 0:
        return torch.zeros_like(channel_mean_abs)
    return channel_mean_abs / layer_mean


def dormant_indices(channel_mean_abs: Tensor, tau: float) -> list[int]:
    """Sorted indices of the filters whose dormant score is ``<= tau``."""
    return torch.nonzero(dormant_scores(channel_mean_abs) <= tau).flatten().tolist()


def grad_dormant_verdict(magnitudes: Tensor, tau: float) -> Optional[tuple[Tensor, list[int]]]:
    """GraMa's gradient scores (Liu et al. 2025) from each filter's mean ``|dL/dW_c|``: the
    same ratio to the layer's average as ReDo's (see :func:`dormant_scores`), and the sorted
    indices of the filters scoring ``<= tau``.

    ``None`` when a magnitude is not finite (an fp16 step whose gradients overflowed, which
    the gradient scaler skips): that step's gradients say nothing about the filters.
    """
    if not bool(torch.isfinite(magnitudes).all()):
        return None
    scores = dormant_scores(magnitudes)
    return scores, torch.nonzero(scores <= tau).flatten().tolist()
