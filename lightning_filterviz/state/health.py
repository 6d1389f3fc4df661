"""A layer's representation at each snapshot: its effective rank, srank and CKA to the first.

Computed on the host (the writer thread, with ``background=True``) from each layer's probe
features at fixed positions (:attr:`~lightning_filterviz.core.records.LayerCapture.features`),
in float64. A matrix's singular values on the device would cost the training thread a
wait: the device's solvers check for errors by reading a flag back to the host.

The features are centred per channel. Singular values come from the eigenvalues of the
smaller Gram matrix (positions x positions, or channels x channels), float64 throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np
import torch

from lightning_filterviz.core.records import CapturedSnapshot, LayerHealth

__all__ = ["SRANK_DELTA", "HealthTracker", "effective_rank", "linear_cka", "singular_values", "srank"]

# srank's delta: the singular values kept explain all but this part of their sum (Kumar et al. 2020).
SRANK_DELTA = 0.01


def singular_values(features: np.ndarray) -> np.ndarray:
    """The singular values of ``features`` ``(positions, channels)`` centred per channel,
    largest first, in float64."""
    return _singular_values_of_gram(_smaller_gram(_centred(features)))


def _smaller_gram(centred: np.ndarray) -> np.ndarray:
    # positions x positions or channels x channels, whichever is smaller: the same nonzero
    # eigenvalues, and the same Frobenius norm.
    return centred @ centred.T if centred.shape[0] < centred.shape[1] else centred.T @ centred


def _singular_values_of_gram(gram: np.ndarray) -> np.ndarray:
    eigenvalues = np.linalg.eigvalsh(gram)[::-1]
    return np.sqrt(np.clip(eigenvalues, 0.0, None))


def effective_rank(values: np.ndarray) -> float:
    """exp of the entropy of the singular values ``values`` normalized to sum to 1 (Roy and
    Vetterli 2007); 0 for features that are all the same."""
    total = float(values.sum())
    if not total > 0:
        return 0.0
    shares = values[values > 0] / total
    return math.exp(float(-(shares * np.log(shares)).sum()))


def srank(values: np.ndarray, delta: float = SRANK_DELTA) -> int:
    """The fewest of the singular values ``values`` (largest first) whose sum reaches
    ``1 - delta`` of the total (Kumar et al. 2020); 0 for features that are all the same."""
    total = float(values.sum())
    if not total > 0:
        return 0
    explained = np.cumsum(values) / total
    return int(np.searchsorted(explained, 1.0 - delta) + 1)


def linear_cka(first: np.ndarray, now: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) of two feature matrices ``(positions, channels)``
    taken at the same positions, each centred per channel: 1 when one is the other up to an
    orthogonal transform and a scale, near 0 for unrelated ones.

    ``linear_cka(x, x)`` is exactly 1: the cross term and both self terms are one computation.
    """
    x, y = _centred(first), _centred(now)
    cross = _squared_frobenius(y.T @ x)
    # Each self term as a product of two arrays, like the cross term: NumPy computes a
    # matrix times its own transpose another way (syrk), which would differ in the last bits.
    scale = math.sqrt(_squared_frobenius(x.T @ x.copy()) * _squared_frobenius(y.T @ y.copy()))
    return cross / scale if scale > 0 else float("nan")


@dataclass(frozen=True)
class _FirstFeatures:
    values: np.ndarray  # as captured, float32
    centred: np.ndarray
    self_term: float  # the squared Frobenius norm of its Gram matrix


class HealthTracker:
    """Each layer's health signals, snapshot by snapshot, against the features of its first.

    The first snapshot's features stay in host memory (``positions x channels`` float32 per
    layer) and in the checkpoint (as float16: 4.9 MB for the 4800 channels of ResNet-18's convs).
    """

    def __init__(self) -> None:
        self._first: dict[str, _FirstFeatures] = {}

    def update(self, captured: CapturedSnapshot) -> dict[str, LayerHealth]:
        """The signals of each layer of ``captured`` with finite features; the first features
        of a layer seen for the first time are kept."""
        health = {}
        for name, layer in captured.layers.items():
            if layer.features is None:
                continue
            features = layer.features.numpy()
            if not np.isfinite(features).all():  # a NaN probe pixel or an overflow: not judged
                continue
            health[name] = self._judge(name, features)
        return health

    def _judge(self, name: str, features: np.ndarray) -> LayerHealth:
        centred = _centred(features)
        gram = _smaller_gram(centred)
        self_term = _squared_frobenius(gram)
        first = self._first.get(name)
        if first is None:
            first = self._first[name] = _FirstFeatures(features.astype(np.float32, copy=True), centred, self_term)
        values = _singular_values_of_gram(gram)
        return LayerHealth(
            effective_rank=effective_rank(values),
            srank=srank(values),
            cka_to_first=_cka_to(first, features, centred, self_term),
        )

    def state_dict(self) -> dict[str, Any]:
        return {"first": {name: torch.from_numpy(first.values.astype(np.float16)) for name, first in self._first.items()}}

    def load_state_dict(self, state: Optional[Mapping[str, Any]]) -> None:
        self._first = {}
        for name, stored in (state or {}).get("first", {}).items():
            values = _as_array(stored).astype(np.float32)
            centred = _centred(values)
            self._first[name] = _FirstFeatures(values, centred, _squared_frobenius(_smaller_gram(centred)))


def _cka_to(first: _FirstFeatures, features: np.ndarray, centred: np.ndarray, self_term: float) -> float:
    """Linear CKA of ``features`` to ``first``, reusing both Gram matrices' norms: one more
    product per layer. The same features as the first give exactly 1."""
    if first.values.shape != features.shape:  # another probe: nothing to compare position by position
        return float("nan")
    if np.array_equal(first.values, features):
        return 1.0
    scale = math.sqrt(first.self_term * self_term)
    return _squared_frobenius(centred.T @ first.centred) / scale if scale > 0 else float("nan")


def _centred(features: np.ndarray) -> np.ndarray:
    values = np.asarray(features, dtype=np.float64)
    return values - values.mean(axis=0, keepdims=True)


def _squared_frobenius(matrix: np.ndarray) -> float:
    return float(np.einsum("ij,ij->", matrix, matrix))


def _as_array(values: Any) -> np.ndarray:
    return values.numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
