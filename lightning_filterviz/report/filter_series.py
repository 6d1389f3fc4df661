"""One layer's filters over a run, for the report's filter page: the same series and states
the Filters tab shows (see :mod:`lightning_filterviz.board.run_history`), taken from the
snapshots the report has read.

Per filter and snapshot: its state (alive, dormant or dead, from the monitor's verdicts in
the file; dead wins over dormant), its mean ``|activation|`` on the probe, ReDo's dormant
score (that mean over the layer's average), its drift from its first weights, its norm
over its first norm and its gradient score (GraMa: its mean ``|dL/dW_c|`` over the layer's
average), with whether the monitor found it gradient-dormant. Per validation run that made
them: the layer's feature visualizations. NumPy only.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from lightning_filterviz.report.images import evenly_spaced
from lightning_filterviz.report.runs import (
    ReportError,
    ReportWarning,
    Run,
    SnapshotRecord,
    read_feature_vis,
    read_maps,
)

__all__ = [
    "ALIVE",
    "CURVES",
    "DEAD",
    "DORMANT",
    "GRADIENT_CURVES",
    "MAX_FEATURE_VIS_SETS",
    "STATE_NAMES",
    "UNKNOWN",
    "LayerTimeline",
    "check_filter_layer",
    "layer_timeline",
]

# A filter's state at a snapshot, numbered as the Filters tab numbers them.
UNKNOWN, ALIVE, DORMANT, DEAD = -1, 0, 1, 2
STATE_NAMES = {UNKNOWN: "unknown", ALIVE: "alive", DORMANT: "dormant", DEAD: "dead"}
# The curves of a filter, in the order drawn: key in LayerTimeline.curves -> axis label.
CURVES = {
    "mean_activation": "mean |activation|",
    "dormant_score": "dormant score",
    "drift": "drift (1 - cosine)",
    "norm_ratio": "norm ratio",
    "grad_score": "gradient score",
}
# The curves shaded where the filter is gradient-dormant, instead of dead or dormant.
GRADIENT_CURVES = ("grad_score",)
# A long run validates many times; past this many sets of feature visualizations, this many
# are shown, evenly spaced (first and last kept): each is a picture the size of the model's input.
MAX_FEATURE_VIS_SETS = 12


@dataclass(frozen=True)
class LayerTimeline:
    """One layer over the snapshots that hold it; tables are ``(out_channels, snapshots)``,
    NaN where a snapshot has no such value.

    Attributes:
        layer: the conv layer.
        steps: the snapshots' steps, in the run's order.
        out_channels: the conv's filters.
        drawn: filters ``0 .. drawn - 1`` have their weights in every snapshot (``max_filters``).
        state: :data:`ALIVE`, :data:`DORMANT`, :data:`DEAD` or :data:`UNKNOWN` (no activation statistics).
        grad_dormant: whether the filter was gradient-dormant (``False`` where its gradients were not read).
        frozen: whether the conv's weight did not require grad at the last snapshot.
        curves: :data:`CURVES` key -> its table.
        filters: ``(snapshots, drawn, c, h, w)``, the drawn part of each filter.
        maps_steps: the steps whose file kept the layer's feature maps.
        maps: each of those snapshots' ``(channels, H, W)`` maps.
        signed: whether the maps are the conv's output before any activation (drawn around zero).
        examples: per validation run with dataset examples of the layer: ``(step, patches
            (F, k, h, w, 3) uint8, values (F, k))``.
        feature_vis: per set of feature visualizations of the layer (at most
            :data:`MAX_FEATURE_VIS_SETS`, evenly spaced): ``(step, images (F, H, W, 3) uint8)``,
            filter ``i``'s at ``i``.
    """

    layer: str
    steps: tuple[int, ...]
    out_channels: int
    drawn: int
    state: np.ndarray
    grad_dormant: np.ndarray
    frozen: bool
    curves: dict[str, np.ndarray]
    filters: np.ndarray
    maps_steps: tuple[int, ...]
    maps: list[np.ndarray]
    signed: bool
    examples: list[tuple[int, np.ndarray, np.ndarray]]
    feature_vis: list[tuple[int, np.ndarray]]


def check_filter_layer(runs: Sequence[Run], requested: Optional[str]) -> None:
    """Check that some run has the layer asked for the filter page (``None``: each run's
    first conv, which every run has). Runs under one directory may be of different models:
    one that lacks the layer gets a note on the page.

    Raises:
        ReportError: no run has ``requested``; the message names the layers there are.
    """
    if requested is None or any(requested in run.layers for run in runs):
        return
    there = list(dict.fromkeys(name for run in runs for name in run.layers))
    raise ReportError(f"no layer {requested!r} in the history; its layers are: {', '.join(there)}")


def layer_timeline(run: Run, layer: str) -> LayerTimeline:
    """``layer`` over every snapshot of ``run`` that holds it, with its feature maps read back.

    Args:
        run: a run with ``layer`` in at least one snapshot.
        layer: the conv layer.

    Returns:
        The layer's timeline.

    Warns:
        ReportWarning: for a file whose feature maps or feature visualizations cannot be read
            again; those are left out.
    """
    holding = [record for record in run.records if layer in record.filters]
    out_channels = max(record.out_channels[layer] for record in holding)
    drawn = min(len(record.filters[layer]) for record in holding)
    mean_activation = _stacked([record.mean_activation.get(layer) for record in holding], out_channels)
    maps_steps, maps = _kept_maps(holding, layer)
    return LayerTimeline(
        layer=layer,
        steps=tuple(record.step for record in holding),
        out_channels=out_channels,
        drawn=drawn,
        state=_states(holding, layer, out_channels),
        grad_dormant=_marked([record.grad_dormant.get(layer) for record in holding], out_channels),
        frozen=layer in holding[-1].frozen,
        curves={
            "mean_activation": mean_activation,
            "dormant_score": _dormant_scores(mean_activation),
            "drift": _stacked([record.drift.get(layer) for record in holding], out_channels),
            "norm_ratio": _stacked([record.norm_ratio.get(layer) for record in holding], out_channels),
            "grad_score": _stacked([record.grad_scores.get(layer) for record in holding], out_channels),
        },
        filters=np.stack([record.filters[layer][:drawn] for record in holding]),
        maps_steps=maps_steps,
        maps=maps,
        signed=layer in holding[-1].signed,
        examples=[(record.step, record.patches[layer], record.values[layer]) for record in run.examples if layer in record.patches],
        feature_vis=_feature_vis(run, layer),
    )


def _stacked(values: list[Optional[np.ndarray]], out_channels: int) -> np.ndarray:
    """Per-filter values of each snapshot as columns; NaN where a snapshot lacks them."""
    table = np.full((out_channels, len(values)), np.nan, dtype=np.float32)
    for column, value in enumerate(values):
        if value is not None:
            table[: len(value), column] = value[:out_channels]
    return table


def _marked(indices: list[Optional[np.ndarray]], out_channels: int) -> np.ndarray:
    """Per filter and snapshot, whether the snapshot lists the filter among ``indices``."""
    table = np.zeros((out_channels, len(indices)), dtype=bool)
    for column, listed in enumerate(indices):
        if listed is not None:
            table[listed[(listed >= 0) & (listed < out_channels)], column] = True
    return table


def _states(holding: list[SnapshotRecord], layer: str, out_channels: int) -> np.ndarray:
    """Each filter's state at each snapshot, from the monitor's verdicts in the files."""
    state = np.full((out_channels, len(holding)), UNKNOWN, dtype=np.int8)
    for column, record in enumerate(holding):
        if layer not in record.mean_activation:
            continue  # no activation statistics: neither alive nor dormant is known
        state[:, column] = ALIVE
        for verdicts, verdict in ((record.dormant, DORMANT), (record.dead, DEAD)):  # dead wins over dormant
            indices = verdicts.get(layer)
            if indices is not None:
                state[indices[(indices >= 0) & (indices < out_channels)], column] = verdict
    return state


def _dormant_scores(mean_activation: np.ndarray) -> np.ndarray:
    """ReDo's score per snapshot (column), as the monitor computes it: a filter's mean
    ``|activation|`` over the layer's average of the finite ones; 0 for a layer all zeros."""
    with np.errstate(invalid="ignore", divide="ignore"):
        finite = np.isfinite(mean_activation)
        counts = finite.sum(axis=0)
        sums = np.where(finite, mean_activation, 0.0).sum(axis=0)
        layer_mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        scores = mean_activation / layer_mean
    return np.where(layer_mean > 0, scores, np.where(np.isnan(mean_activation), np.nan, 0.0)).astype(np.float32)


def _kept_maps(holding: list[SnapshotRecord], layer: str) -> tuple[tuple[int, ...], list[np.ndarray]]:
    """The steps and feature maps of the snapshots whose file kept ``layer``'s maps."""
    steps, maps = [], []
    for record in holding:
        if layer not in record.kept_maps:
            continue
        try:
            maps.append(read_maps(record, layer))
        except ReportError as error:
            warnings.warn(f"{error}; they are left out", ReportWarning, stacklevel=3)
            continue
        steps.append(record.step)
    return tuple(steps), maps


def _feature_vis(run: Run, layer: str) -> list[tuple[int, np.ndarray]]:
    """The steps and pictures of the layer's feature visualizations, of at most
    :data:`MAX_FEATURE_VIS_SETS` sets evenly spaced over the run."""
    found = []
    for record in evenly_spaced([record for record in run.feature_vis if layer in record.filters], MAX_FEATURE_VIS_SETS):
        try:
            images, _ = read_feature_vis(record, layer)
        except ReportError as error:
            warnings.warn(f"{error}; they are left out", ReportWarning, stacklevel=3)
            continue
        found.append((record.step, images))
    return found
