"""One run's history as the Filters tab reads it: read while training writes it, kept per layer.

A run's history directory gains a file per snapshot (see :mod:`lightning_filterviz.core.history`).
:class:`RunHistory` lists the directory on each request and reads only what it has not read
yet: a file is known by its path, size and modification time, so a new snapshot is read once
and a file replaced in place (the end of ``fit`` completes the last one with its feature maps)
is read again. A layer's statistics and filters are read on its first request, one file open
per snapshot, and kept; feature maps and dataset examples, the larger arrays, are read when a
filter's page asks for them, and so are feature visualizations, of which only the filter's
picture is read (files known the same way: which layers a file holds is read once). A file
that cannot be read (damaged, or not a history file) is left out and tried again once it
changes. NumPy only: TensorBoard imports this module.
"""

from __future__ import annotations

import threading
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from lightning_filterviz.board.npz import read_arrays, read_rows
from lightning_filterviz.core.history import (
    EXAMPLES_PATTERN,
    FEATURE_VIS_PATTERN,
    HISTORY_FORMAT,
    HISTORY_PATTERN,
    history_files,
)

__all__ = [
    "ALIVE",
    "DEAD",
    "DORMANT",
    "GRAD_ACTIVE",
    "GRAD_DORMANT",
    "HEALTH_KEYS",
    "UNKNOWN",
    "LayerSeries",
    "RunHistory",
]

# A request within this many seconds of the last listing, with the directory unchanged, uses it.
RELIST_SECONDS = 2.0
# A filter's state at a snapshot, as the layer map colours it.
UNKNOWN, ALIVE, DORMANT, DEAD = -1, 0, 1, 2
# Whether a filter's weights got a gradient at the step before a snapshot (UNKNOWN: not read).
GRAD_ACTIVE, GRAD_DORMANT = 0, 1


@dataclass(frozen=True)
class _FileKey:
    size: int
    modified_ns: int


@dataclass
class _LayerOfSnapshot:
    """One layer's small arrays in one snapshot file."""

    out_channels: int
    filters: np.ndarray
    drift: Optional[np.ndarray]
    norm_ratio: Optional[np.ndarray]
    mean_activation: Optional[np.ndarray]
    dormant: Optional[np.ndarray]
    dead: Optional[np.ndarray]
    has_maps: bool
    signed: bool
    health: dict[str, float]
    grad_scores: Optional[np.ndarray]
    grad_dormant: Optional[np.ndarray]
    frozen: bool


@dataclass
class _SnapshotFile:
    """A snapshot file as far as it has been read: its step and layers come with the first
    layer read from it (one open per file and layer)."""

    key: _FileKey
    step: Optional[int] = None
    layers: Optional[tuple[str, ...]] = None
    unreadable: bool = False
    read: dict[str, Optional[_LayerOfSnapshot]] = field(default_factory=dict)


@dataclass
class _FeatureVisFile:
    """A feature visualizations file: its step and the layers it has pictures of, read once
    per version of the file (``step`` is ``None`` for a file that cannot be read)."""

    key: _FileKey
    step: Optional[int]
    layers: frozenset[str]


@dataclass(frozen=True)
class LayerSeries:
    """One layer over a run's snapshots: ``(out_channels, snapshots)`` arrays, NaN where a
    snapshot has no such value.

    Attributes:
        steps: the snapshots' steps, ascending.
        out_channels: the conv's filters.
        drawn: filters ``0 .. drawn - 1`` have their weights in the history (``max_filters``).
        state: :data:`ALIVE`, :data:`DORMANT`, :data:`DEAD` or :data:`UNKNOWN` (no activation statistics).
        drift: 1 - cosine to each filter's first weights.
        norm_ratio: each filter's norm over its first one.
        mean_activation: mean ``|activation|`` on the probe.
        dormant_score: ReDo's score, the mean ``|activation|`` over the layer's average.
        filters: ``(snapshots, drawn, c, h, w)``, the drawn part of each filter.
        maps_steps: the steps whose file kept the feature maps.
        signed: whether the maps are a conv's output before any activation (drawn around zero).
        health: each of :data:`HEALTH_KEYS` -> ``(snapshots,)``, NaN where a snapshot lacks it.
        grad_score: each filter's gradient score (its mean ``|dL/dW_c|`` over the layer's
            average), NaN where the snapshot's gradients were not read.
        grad_dormant: :data:`GRAD_DORMANT`, :data:`GRAD_ACTIVE` or :data:`UNKNOWN` (not read).
        frozen: whether the conv's weight did not require grad at the last snapshot.
    """

    steps: tuple[int, ...]
    out_channels: int
    drawn: int
    state: np.ndarray
    drift: np.ndarray
    norm_ratio: np.ndarray
    mean_activation: np.ndarray
    dormant_score: np.ndarray
    filters: np.ndarray
    maps_steps: tuple[int, ...]
    signed: bool
    health: dict[str, np.ndarray]
    grad_score: np.ndarray
    grad_dormant: np.ndarray
    frozen: bool

    def grad_dormant_fraction(self) -> tuple[tuple[int, ...], np.ndarray]:
        """The steps whose gradients were read, and the layer's gradient-dormant fraction at each."""
        known = self.grad_dormant != UNKNOWN
        judged = known.any(axis=0)
        dormant = (self.grad_dormant[:, judged] == GRAD_DORMANT).sum(axis=0)
        fractions = dormant / known[:, judged].sum(axis=0)
        return tuple(step for step, read in zip(self.steps, judged) if read), fractions.astype(np.float64)


class RunHistory:
    """A run's history directory, read incrementally; safe to use from several request threads.

    Args:
        directory: the run's history directory (``<log_dir>/filterviz/history``).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._snapshots: dict[Path, _SnapshotFile] = {}
        self._lock = threading.Lock()
        # The last listing, when it was made and the directory's modification time then.
        self._listing: list[tuple[Path, _SnapshotFile]] = []
        self._listed: Optional[tuple[float, Optional[int]]] = None
        # Bumped whenever the listing changes; a layer's series is kept for one listing.
        self._version = 0
        self._series: dict[str, tuple[int, Optional[LayerSeries]]] = {}
        self._feature_vis_files: dict[Path, _FeatureVisFile] = {}

    def summary(self) -> Optional[tuple[tuple[str, ...], int, int]]:
        """``(the watched convs, the readable snapshots, the last step)``, the convs from the
        latest readable snapshot file, or ``None`` when there is none."""
        with self._lock:
            files = self._refreshed()
            for path, snapshot in files:
                self._read_heading(path, snapshot)  # once per file
            readable = [snapshot for _, snapshot in files if snapshot.step is not None and snapshot.layers is not None]
        if not readable:
            return None
        last = max(readable, key=lambda snapshot: snapshot.step or 0)
        return last.layers or (), len(readable), last.step or 0

    def layer(self, name: str) -> Optional[LayerSeries]:
        """``name`` over every snapshot that has it, or ``None`` when none has."""
        with self._lock:
            files = self._refreshed()
            kept = self._series.get(name)
            if kept is not None and kept[0] == self._version:
                return kept[1]
            found = [(snapshot, self._layer_of(path, snapshot, name)) for path, snapshot in files]
            present = [(s.step, layer) for s, layer in found if layer is not None and s.step is not None]
            series = _series([step for step, _ in present], [layer for _, layer in present]) if present else None
            self._series[name] = (self._version, series)
            return series

    def maps(self, name: str, channel: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Per snapshot that kept ``name``'s feature maps: ``(step, the channel's map, the
        layer's maps)`` as float32 (the layer's, to draw the channel on the layer's range)."""
        with self._lock:
            kept = [
                (path, snapshot.step)
                for path, snapshot in self._refreshed()
                if _kept_maps(self._layer_of(path, snapshot, name)) and snapshot.step is not None
            ]
        found = []
        for path, step in kept:
            maps = _read_arrays(path, (f"{name}/maps",))[0].get(f"{name}/maps")
            if maps is not None and 0 <= channel < len(maps):
                layer_maps = maps.astype(np.float32)
                found.append((step, layer_maps[channel], layer_maps))
        return found

    def examples(self, name: str, channel: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Per validation run with dataset examples of ``name``: ``(step, the filter's drawn
        examples (k, h, w, 3) uint8, their values (k,))``."""
        found = []
        for path in history_files(self.directory, EXAMPLES_PATTERN):
            arrays, _ = _read_arrays(path, ("step", f"{name}/patches", f"{name}/values"))
            patches, values = arrays.get(f"{name}/patches"), arrays.get(f"{name}/values")
            if patches is None or values is None or not 0 <= channel < len(patches):
                continue
            found.append((int(arrays["step"]), patches[channel], values[channel]))
        return found

    def examples_steps(self, name: str) -> tuple[int, ...]:
        """The steps of the validation runs with dataset examples of ``name``."""
        steps = []
        for path in history_files(self.directory, EXAMPLES_PATTERN):
            arrays, names = _read_arrays(path, ("step",))
            if "step" in arrays and f"{name}/patches" in names:
                steps.append(int(arrays["step"]))
        return tuple(steps)

    def feature_vis(self, name: str, channel: int) -> list[tuple[int, np.ndarray]]:
        """Per set of feature visualizations of ``name``: ``(step, the filter's picture (H, W, 3
        or 1) uint8)``; a file that cannot be read, or lacks the filter, is left out."""
        found = []
        for path, step in self._feature_vis_of(name):
            arrays, _ = _read_rows(path, {f"{name}/images": channel})
            image = arrays.get(f"{name}/images")
            if image is not None and image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] in (1, 3):
                found.append((step, image))
        return found

    def feature_vis_steps(self, name: str) -> tuple[int, ...]:
        """The steps of the sets of feature visualizations of ``name``."""
        return tuple(step for _, step in self._feature_vis_of(name))

    def _feature_vis_of(self, name: str) -> list[tuple[Path, int]]:
        """The feature visualizations files with pictures of ``name`` and their steps, by step;
        which layers a file holds is read once per version of it."""
        with self._lock:
            listed = {}
            for path in history_files(self.directory, FEATURE_VIS_PATTERN):
                key = _key_of(path)
                if key is None:
                    continue
                known = self._feature_vis_files.get(path)
                listed[path] = known if known is not None and known.key == key else _feature_vis_file(path, key)
            self._feature_vis_files = listed
        return [(path, file.step) for path, file in listed.items() if file.step is not None and name in file.layers]

    def _refreshed(self) -> list[tuple[Path, _SnapshotFile]]:
        """The snapshot files in the order :func:`history_files` gives (by step), the cache
        brought up to the directory: gone files dropped, new and changed ones not read yet.

        The directory is listed again when its modification time changed (a file was
        written, replaced or removed: the writer links each file into place) and at least
        every :data:`RELIST_SECONDS` (a file system whose times are coarser than the writes)."""
        directory_time = _modified_ns(self.directory)
        now = time.monotonic()
        if self._listed is not None and self._listed[1] == directory_time and now - self._listed[0] < RELIST_SECONDS:
            return self._listing
        listing = self._listed_files()
        if [(path, snapshot.key) for path, snapshot in listing] != [(path, s.key) for path, s in self._listing]:
            self._version += 1
        self._listing, self._listed = listing, (now, directory_time)
        return listing

    def _listed_files(self) -> list[tuple[Path, _SnapshotFile]]:
        listed = []
        for path in history_files(self.directory, HISTORY_PATTERN):
            key = _key_of(path)
            if key is None:
                continue
            known = self._snapshots.get(path)
            listed.append((path, known if known is not None and known.key == key else _SnapshotFile(key)))
        self._snapshots = dict(listed)
        return listed

    def _layer_of(self, path: Path, snapshot: _SnapshotFile, name: str) -> Optional[_LayerOfSnapshot]:
        if name not in snapshot.read and not snapshot.unreadable:
            if snapshot.layers is None or name in snapshot.layers:
                snapshot.read[name] = self._read_heading(path, snapshot, name)
        return snapshot.read.get(name)

    def _read_heading(self, path: Path, snapshot: _SnapshotFile, layer: Optional[str] = None) -> Optional[_LayerOfSnapshot]:
        """Read the file's format, step and layers (once), and ``layer``'s arrays with them."""
        if snapshot.unreadable or (snapshot.layers is not None and layer is None):
            return None
        keys = (*_LAYER_KEYS, *HEALTH_KEYS) if layer is not None else ()
        arrays, names = _read_arrays(path, ("format", "step", "layers", *(f"{layer}/{key}" for key in keys)))
        if str(arrays.get("format", "")) != HISTORY_FORMAT or "step" not in arrays or "layers" not in arrays:
            snapshot.unreadable = True  # read again once the file changes (a new key)
            return None
        snapshot.step = int(arrays["step"])
        snapshot.layers = tuple(str(name) for name in arrays["layers"])
        return _layer_from(arrays, names, layer) if layer is not None and layer in snapshot.layers else None


def _modified_ns(directory: Path) -> Optional[int]:
    try:
        return directory.stat().st_mtime_ns
    except OSError:
        return None


def _kept_maps(layer: Optional[_LayerOfSnapshot]) -> bool:
    return layer is not None and layer.has_maps


def _key_of(path: Path) -> Optional[_FileKey]:
    try:
        stat = path.stat()
    except OSError:  # removed between the listing and now
        return None
    return _FileKey(stat.st_size, stat.st_mtime_ns)


_LAYER_KEYS = (
    "filters",
    "out_channels",
    "drift",
    "weight_norm_ratio",
    "channel_mean_abs",
    "channel_max",
    "dormant",
    "dead",
    "grad_scores",
    "grad_dormant",
    "frozen",
)
# The layer's health signals (see lightning_filterviz.core.records.LayerHealth); older files lack them.
HEALTH_KEYS = ("effective_rank", "srank", "cka_to_first")


def _layer_from(arrays: dict[str, np.ndarray], names: frozenset[str], name: str) -> Optional[_LayerOfSnapshot]:
    if f"{name}/filters" not in arrays or f"{name}/out_channels" not in arrays:
        return None
    return _LayerOfSnapshot(
        out_channels=int(arrays[f"{name}/out_channels"]),
        filters=arrays[f"{name}/filters"].astype(np.float32, copy=False),
        drift=arrays.get(f"{name}/drift"),
        norm_ratio=arrays.get(f"{name}/weight_norm_ratio"),
        mean_activation=arrays.get(f"{name}/channel_mean_abs"),
        dormant=arrays.get(f"{name}/dormant"),
        dead=arrays.get(f"{name}/dead"),
        has_maps=f"{name}/maps" in names,
        # Statistics without a channel maximum are of a conv's output before any activation.
        signed=f"{name}/channel_mean_abs" in arrays and f"{name}/channel_max" not in arrays,
        health={key: float(arrays[f"{name}/{key}"]) for key in HEALTH_KEYS if f"{name}/{key}" in arrays},
        grad_scores=arrays.get(f"{name}/grad_scores"),
        grad_dormant=arrays.get(f"{name}/grad_dormant"),
        frozen=bool(arrays.get(f"{name}/frozen", False)),
    )


def _feature_vis_file(path: Path, key: _FileKey) -> _FeatureVisFile:
    """The step and the layers with pictures of a feature visualizations file (no step for a
    file that cannot be read: damaged, half-copied, not a history file)."""
    arrays, names = _read_rows(path, keys=("format", "step", "layers"))
    if str(arrays.get("format", "")) != HISTORY_FORMAT or "step" not in arrays or "layers" not in arrays:
        return _FeatureVisFile(key, None, frozenset())
    layers = frozenset(str(name) for name in arrays["layers"].reshape(-1) if f"{name}/images" in names)
    return _FeatureVisFile(key, int(arrays["step"]), layers)


def _read_arrays(path: Path, keys: tuple[str, ...]) -> tuple[dict[str, np.ndarray], frozenset[str]]:
    """The arrays of ``keys`` that ``path`` holds and the names of all it holds; nothing when
    it cannot be read (damaged, half-copied by hand, not an NPZ file)."""
    try:
        return read_arrays(path, keys)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error):
        return {}, frozenset()


def _read_rows(
    path: Path, rows: Mapping[str, int] = {}, keys: tuple[str, ...] = ()
) -> tuple[dict[str, np.ndarray], frozenset[str]]:
    """:func:`~lightning_filterviz.board.npz.read_rows`, or nothing for a file that cannot be read."""
    try:
        return read_rows(path, keys, rows)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error):
        return {}, frozenset()


def _series(steps: list[int], layers: list[_LayerOfSnapshot]) -> LayerSeries:
    out_channels = max(layer.out_channels for layer in layers)
    drawn = min(len(layer.filters) for layer in layers)
    count = len(layers)

    def stacked(values: list[Optional[np.ndarray]]) -> np.ndarray:
        table = np.full((out_channels, count), np.nan, dtype=np.float32)
        for column, value in enumerate(values):
            if value is not None:
                table[: len(value), column] = value[:out_channels]
        return table

    mean_activation = stacked([layer.mean_activation for layer in layers])
    state = np.full((out_channels, count), UNKNOWN, dtype=np.int8)
    for column, layer in enumerate(layers):
        if layer.mean_activation is None:
            continue
        state[:, column] = ALIVE
        for indices, verdict in ((layer.dormant, DORMANT), (layer.dead, DEAD)):  # dead wins over dormant
            if indices is not None:
                state[indices[(indices >= 0) & (indices < out_channels)], column] = verdict
    return LayerSeries(
        steps=tuple(steps),
        out_channels=out_channels,
        drawn=drawn,
        state=state,
        drift=stacked([layer.drift for layer in layers]),
        norm_ratio=stacked([layer.norm_ratio for layer in layers]),
        mean_activation=mean_activation,
        dormant_score=_dormant_scores(mean_activation),
        filters=np.stack([layer.filters[:drawn] for layer in layers]),
        maps_steps=tuple(step for step, layer in zip(steps, layers) if layer.has_maps),
        signed=layers[-1].signed,
        health={
            key: np.array([layer.health.get(key, np.nan) for layer in layers], dtype=np.float64) for key in HEALTH_KEYS
        },
        grad_score=stacked([_one_per_filter(layer.grad_scores) for layer in layers]),
        grad_dormant=_grad_dormant(layers, out_channels),
        frozen=layers[-1].frozen,
    )


def _grad_dormant(layers: list[_LayerOfSnapshot], out_channels: int) -> np.ndarray:
    """Per filter and snapshot, whether the monitor found it gradient-dormant (UNKNOWN where
    the snapshot's gradients were not read)."""
    table = np.full((out_channels, len(layers)), UNKNOWN, dtype=np.int8)
    for column, layer in enumerate(layers):
        if _one_per_filter(layer.grad_scores) is None or layer.grad_dormant is None:
            continue
        table[:, column] = GRAD_ACTIVE
        indices = layer.grad_dormant.reshape(-1).astype(np.int64, copy=False)
        table[indices[(indices >= 0) & (indices < out_channels)], column] = GRAD_DORMANT
    return table


def _one_per_filter(scores: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """Gradient scores as one number per filter, or ``None`` for arrays of another shape (a damaged file)."""
    return scores if scores is not None and scores.ndim == 1 and scores.dtype.kind in "iuf" else None


def _dormant_scores(mean_activation: np.ndarray) -> np.ndarray:
    """ReDo's score per snapshot (column), as the monitor computes it: a channel's mean
    ``|h|`` over the layer's average of the finite ones; 0 for a layer that is all zeros."""
    with np.errstate(invalid="ignore", divide="ignore"):
        finite = np.where(np.isfinite(mean_activation), mean_activation, 0.0)
        counts = np.isfinite(mean_activation).sum(axis=0)
        layer_mean = np.where(counts > 0, finite.sum(axis=0) / np.maximum(counts, 1), np.nan)
        scores = mean_activation / layer_mean
    return np.where(layer_mean > 0, scores, np.where(np.isnan(mean_activation), np.nan, 0.0)).astype(np.float32)

