"""Learning progress across snapshots: filter drift, filmstrip rows, and the history on disk.

Drift is the angle view of a filter: a conv output is a dot product with the filter, so
what a filter responds to is its direction. ``1 - cos(W_now[c], W_init[c])`` is 0 for a
filter that kept its direction, 1 for one that turned orthogonal and 2 for a negated one;
the weight norm beside it says how much it grew or shrank.

Everything here runs on the training thread on small CPU arrays (NumPy, no torch op on
another thread), and everything it keeps across snapshots is capped by ``max_filters``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from lightning_filterviz.capture import Snapshot
from lightning_filterviz.render import WeightNormalization, displayed_filters, normalize_filters, to_uint8

HISTORY_FORMAT = "lightning_filterviz.history/1"
HISTORY_PATTERN = "step_*.npz"


def filter_drift(weight: Tensor, initial: Tensor) -> Tensor:
    """Cosine distance of each filter from its initial weights: ``(F,)`` in [0, 2].

    A filter that is all zeros now or at the start has no direction; its drift is 1.
    """
    now, start = weight.flatten(1).double(), initial.flatten(1).double()
    norms = now.norm(dim=1) * start.norm(dim=1)
    cosine = torch.where(norms > 0, (now * start).sum(dim=1) / norms.clamp_min(1e-300), torch.zeros_like(norms))
    return (1.0 - cosine.clamp(-1.0, 1.0)).float()


class ProgressTracker:
    """Keeps what the progress views need from one snapshot to the next.

    Args:
        filmstrip_layers: layers whose filters are kept for the filmstrip, one row per snapshot.
    """

    def __init__(self, filmstrip_layers: Sequence[str] = ()) -> None:
        self.filmstrip_layers = list(filmstrip_layers)
        self._initial: dict[str, Tensor] = {}
        self._filmstrips: dict[str, list[np.ndarray]] = {}

    def update(
        self,
        snapshot: Snapshot,
        normalization: WeightNormalization,
        symmetric_ranges: dict[str, float],
    ) -> None:
        """Set ``snapshot.drift`` and ``snapshot.weight_norm_ratio``; add this snapshot's filmstrip rows."""
        for name, layer in snapshot.layers.items():
            initial = self._initial.get(name)
            if initial is None or initial.shape != layer.weight.shape:
                initial = self._initial[name] = layer.weight.clone()
            snapshot.drift[name] = filter_drift(layer.weight, initial)
            initial_norm = initial.flatten(1).norm(dim=1)
            norm = layer.weight.flatten(1).norm(dim=1)
            snapshot.weight_norm_ratio[name] = torch.where(initial_norm > 0, norm / initial_norm, torch.ones_like(norm))
            if name in self.filmstrip_layers:
                shown = displayed_filters(layer.weight.numpy(), layer.rgb)
                unit = normalize_filters(shown, normalization, symmetric_ranges.get(name))
                self._filmstrips.setdefault(name, []).append(to_uint8(unit).transpose(0, 2, 3, 1))

    def filmstrip_rows(self, layer: str) -> list[np.ndarray]:
        """The layer's filters at every snapshot so far: ``(F, kh, kw, C)`` ``uint8`` each."""
        return list(self._filmstrips.get(layer, []))

    def state_dict(self) -> dict[str, Any]:
        return {
            "initial": {name: weight.clone() for name, weight in self._initial.items()},
            "filmstrips": {name: [torch.from_numpy(row) for row in rows] for name, rows in self._filmstrips.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._initial = {name: weight.clone() for name, weight in state.get("initial", {}).items()}
        self._filmstrips = {
            name: [row.numpy() for row in rows] for name, rows in state.get("filmstrips", {}).items()
        }


def history_arrays(snapshot: Snapshot) -> dict[str, np.ndarray]:
    """One snapshot as plain arrays for an NPZ file (no objects, so ``allow_pickle=False`` loads it).

    Keys: ``format``, ``step``, ``layers`` and, per layer, ``<layer>/filters`` (the drawn
    part of the first ``max_filters`` filters), ``<layer>/drift``, ``<layer>/weight_norm_ratio``,
    ``<layer>/out_channels`` and, where the conv has an activation, ``<layer>/channel_max``,
    ``<layer>/channel_mean_abs``, ``<layer>/maps`` (first probe image, float16),
    ``<layer>/dormant`` and (ReLU family) ``<layer>/dead``.
    """
    arrays: dict[str, np.ndarray] = {
        "format": np.array(HISTORY_FORMAT),
        "step": np.array(snapshot.step, dtype=np.int64),
        "layers": np.array(list(snapshot.layers), dtype=np.str_),
    }
    for name, layer in snapshot.layers.items():
        arrays[f"{name}/filters"] = displayed_filters(layer.weight.numpy(), layer.rgb).astype(np.float32)
        arrays[f"{name}/out_channels"] = np.array(layer.out_channels, dtype=np.int64)
        if name in snapshot.drift:
            arrays[f"{name}/drift"] = snapshot.drift[name].numpy()
            arrays[f"{name}/weight_norm_ratio"] = snapshot.weight_norm_ratio[name].numpy()
        if layer.channel_max is not None and layer.channel_mean_abs is not None and layer.maps is not None:
            arrays[f"{name}/channel_max"] = layer.channel_max.numpy()
            arrays[f"{name}/channel_mean_abs"] = layer.channel_mean_abs.numpy()
            arrays[f"{name}/maps"] = layer.maps[0].numpy().astype(np.float16)
        if name in snapshot.dormant_filters:
            arrays[f"{name}/dormant"] = np.array(snapshot.dormant_filters[name], dtype=np.int64)
        if name in snapshot.dead_filters:
            arrays[f"{name}/dead"] = np.array(snapshot.dead_filters[name], dtype=np.int64)
    return arrays


class HistoryWriter:
    """Saves each snapshot as ``<directory>/step_<step>.npz``.

    Args:
        directory: created when missing.
    """

    def __init__(self, directory: Union[str, os.PathLike]) -> None:
        self.directory = Path(directory)

    def write(self, snapshot: Snapshot) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"step_{snapshot.step:08d}.npz"
        np.savez(path, **history_arrays(snapshot))
        return path


def load_history(path: Union[str, os.PathLike]) -> dict[str, np.ndarray]:
    """Read one history file back (``allow_pickle=False``).

    Raises:
        ValueError: if the file is not a lightning_filterviz history file.
    """
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    if str(arrays.get("format", "")) != HISTORY_FORMAT:
        raise ValueError(f"{path} is not a lightning_filterviz history file (no format {HISTORY_FORMAT!r}).")
    return arrays


def resolve_filmstrip_layers(requested: Optional[Sequence[str]], watched: Sequence[str]) -> list[str]:
    """``None``: the first watched conv; otherwise names or fnmatch patterns among the watched."""
    import fnmatch

    if requested is None:
        return list(watched[:1])
    return [
        name for name in watched if any(name == pattern or fnmatch.fnmatchcase(name, pattern) for pattern in requested)
    ]
