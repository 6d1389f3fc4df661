"""Learning progress across snapshots: filter drift and filmstrip rows.

Drift is the angle view of a filter: a conv output is a dot product with the filter, so
what a filter responds to is its direction. ``1 - cos(W_now[c], W_init[c])`` is 0 for a
filter that kept its direction, 1 for one that turned orthogonal and 2 for a negated one;
the weight norm beside it says how much it grew or shrank.

Everything here runs on the writer thread (with ``background=True``) on small CPU arrays,
in NumPy (see :mod:`lightning_filterviz.drawing.render` for why; the tensors made here only
wrap NumPy arrays). Everything it keeps across snapshots is capped by ``max_filters``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from lightning_filterviz.core.records import CapturedSnapshot
from lightning_filterviz.core.filters import WeightNormalization, displayed_filters, normalize_filters
from lightning_filterviz.core.tiles import to_uint8

__all__ = ["ProgressTracker", "drift_and_norm_ratio", "filter_drift"]

ArrayLike = Any  # an array or a CPU tensor


def filter_drift(weight: ArrayLike, initial: ArrayLike) -> np.ndarray:
    """Cosine distance of each filter from its initial weights: ``(F,)`` in [0, 2].

    A filter that is all zeros now or at the start has no direction; its drift is 1.
    """
    return drift_and_norm_ratio(weight, initial)[0]


def drift_and_norm_ratio(weight: ArrayLike, initial: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Per filter: :func:`filter_drift`, and its L2 norm over the initial one (1 where that was 0)."""
    # Three float32 passes over the filters, in whatever memory order they lie (no copies).
    now, start = np.asarray(weight, dtype=np.float32), np.asarray(initial, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        now_norm = np.sqrt(_filterwise_dot(now, now))
        start_norm = np.sqrt(_filterwise_dot(start, start))
        dot = _filterwise_dot(now, start)
        directed = (now_norm > 0) & (start_norm > 0) & np.isfinite(now_norm) & np.isfinite(start_norm)
        # Dividing twice, so that no product of two norms overflows float32.
        cosine = dot / np.where(directed, now_norm, 1.0) / np.where(directed, start_norm, 1.0)
    drift = 1.0 - np.where(directed, np.clip(cosine, -1.0, 1.0), 0.0)
    ratio = np.where(start_norm > 0, now_norm / np.where(start_norm > 0, start_norm, 1.0), 1.0)
    return drift.astype(np.float32), ratio.astype(np.float32)


class ProgressTracker:
    """Keeps what the progress views need from one snapshot to the next: each conv's initial
    filters, and the filmstrip rows of the convs a snapshot names (``filmstrip_layers``)."""

    def __init__(self) -> None:
        self._initial: dict[str, np.ndarray] = {}
        self._filmstrips: dict[str, list[np.ndarray]] = {}

    def update(
        self,
        captured: CapturedSnapshot,
        normalization: WeightNormalization,
        symmetric_ranges: Mapping[str, float],
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Add this snapshot's filmstrip rows; return its per-filter drift and weight norm
        ratio, by conv name."""
        drifts, ratios = {}, {}
        for name, layer in captured.layers.items():
            weight = layer.weight.numpy()
            initial = self._initial.get(name)
            if initial is None or initial.shape != weight.shape:
                initial = self._initial[name] = weight.copy()
            drift, ratio = drift_and_norm_ratio(weight, initial)
            drifts[name], ratios[name] = torch.from_numpy(drift), torch.from_numpy(ratio)
            if name in captured.filmstrip_layers:
                shown = displayed_filters(weight, layer.rgb)
                unit = normalize_filters(shown, normalization, symmetric_ranges.get(name))
                self._filmstrips.setdefault(name, []).append(to_uint8(unit).transpose(0, 2, 3, 1))
        return drifts, ratios

    def drift(self, captured: CapturedSnapshot) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per conv of ``captured`` whose initial filters are known: its per-filter drift and
        weight norm ratio, leaving the filmstrips as they are."""
        drifts, ratios = {}, {}
        for name, layer in captured.layers.items():
            initial = self._initial.get(name)
            weight = layer.weight.numpy()
            if initial is not None and initial.shape == weight.shape:
                drift, ratio = drift_and_norm_ratio(weight, initial)
                drifts[name], ratios[name] = torch.from_numpy(drift), torch.from_numpy(ratio)
        return drifts, ratios

    def filmstrips(self) -> dict[str, tuple[np.ndarray, ...]]:
        """Per conv with a filmstrip, its rows so far."""
        return {name: tuple(rows) for name, rows in self._filmstrips.items() if rows}

    def filmstrip_rows(self, layer: str) -> list[np.ndarray]:
        """The layer's filters at every snapshot so far: ``(F, kh, kw, C)`` ``uint8`` each."""
        return list(self._filmstrips.get(layer, []))

    def state_dict(self) -> dict[str, Any]:
        return {
            "initial": {name: torch.from_numpy(weight.copy()) for name, weight in self._initial.items()},
            "filmstrips": {name: [torch.from_numpy(row) for row in rows] for name, rows in self._filmstrips.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._initial = {name: _as_array(weight).copy() for name, weight in state.get("initial", {}).items()}
        filmstrips = state.get("filmstrips", {})
        self._filmstrips = {name: [_as_array(row) for row in rows] for name, rows in filmstrips.items()}


def _filterwise_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per filter (first axis), the dot product of ``a`` and ``b``; strided conv weights are read in place."""
    if a.ndim == 4:
        return np.einsum("fchw,fchw->f", a, b)
    return np.einsum("fx,fx->f", a.reshape(len(a), -1), b.reshape(len(b), -1))


def _as_array(values: Any) -> np.ndarray:
    return values.numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
