"""What of a conv's filters is drawn, and how their values map to [0, 1].

The filter primitives every picture of weights starts from, in the run's images, the
history files and the report alike. NumPy only.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import numpy as np

__all__ = ["WEIGHT_NORMALIZATIONS", "WeightNormalization", "displayed_filters", "non_finite_indices", "normalize_filters"]

WeightNormalization = Literal["filter", "layer", "symmetric"]
WEIGHT_NORMALIZATIONS = ("filter", "layer", "symmetric")


def displayed_filters(weight: np.ndarray, rgb: bool) -> np.ndarray:
    """The part of each filter that is drawn: all 3 channels for RGB, else one grey slice.

    The grey slice is the input channel with the largest L2 norm; a slice holding NaN or
    Inf is taken before any finite one, so that the drawn part shows the filter is broken.
    The result is its own fixed point: ``displayed_filters(displayed_filters(w, rgb), rgb)``
    is the same array.
    """
    if weight.shape[1] == 1 or (rgb and weight.shape[1] == 3):
        return weight
    flat = weight.reshape(*weight.shape[:2], -1)
    # The largest squared norm is the largest norm; einsum sums the squares without a temporary.
    strength = np.einsum("fcx,fcx->fc", flat, flat)
    broken = non_finite_indices(flat)
    if broken:  # rare, so the per-slice check runs on the broken filters only
        # A finite slice whose squares overflow stays below a non-finite one.
        np.minimum(strength, np.finfo(strength.dtype).max, out=strength)
        strength[broken] = np.where(np.isfinite(flat[broken]).all(axis=2), strength[broken], np.inf)
    strongest = strength.argmax(axis=1)
    return weight[np.arange(len(weight)), strongest][:, None]


def normalize_filters(
    weight: np.ndarray, normalization: WeightNormalization = "filter", symmetric_range: Optional[float] = None
) -> np.ndarray:
    """Map filter values to [0, 1] (see :func:`weight_grid` for the modes)."""
    weight = np.nan_to_num(np.asarray(weight, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if normalization == "filter":
        flat = weight.reshape(len(weight), -1)
        low = flat.min(axis=1).reshape(-1, 1, 1, 1)
        high = flat.max(axis=1).reshape(-1, 1, 1, 1)
        return _scale_to_unit(weight, low, high)
    if normalization == "layer":
        return _scale_to_unit(weight, weight.min(), weight.max())
    if normalization == "symmetric":
        half_range = symmetric_range if symmetric_range is not None else float(np.abs(weight).max())
        half_range = max(half_range, 1e-12)
        return np.clip((weight / half_range + 1.0) / 2.0, 0.0, 1.0)
    raise ValueError(f"Unknown weight normalization {normalization!r}; use one of {WEIGHT_NORMALIZATIONS}.")


def _scale_to_unit(values: np.ndarray, low: Any, high: Any) -> np.ndarray:
    span = np.asarray(high - low, dtype=np.float32)
    # A constant filter (or layer) has no pattern to show: draw it as 0 rather than divide by 0.
    safe_span = np.where(span > 0, span, 1.0)
    return np.where(span > 0, (values - low) / safe_span, 0.0).astype(np.float32)


def non_finite_indices(values: np.ndarray) -> list[int]:
    """Indices along the first axis whose values hold a NaN or an Inf."""
    return np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1)).tolist()


