"""The runs a report shows: history files found and read back, and the series it charts.

Each snapshot lies in ``<log dir>/filterviz/history/step_<step>.npz`` (see
:mod:`lightning_filterviz.core.history`, which owns the format), beside the validation runs'
dataset examples and feature visualizations. :func:`load_runs` finds every run under a
directory and reads its snapshots, keeping what the page needs and dropping the feature
maps (and the feature visualizations' pictures, read again when drawn, with
:func:`read_feature_vis`); :func:`fraction_series`, :func:`drift_series` and
:func:`health_series` turn a run into the lines of its charts. NumPy only: the report loads
no torch.

A damaged history costs only what is damaged: a file that cannot be read is skipped, and a
layer whose arrays a file lacks is left out of that file, each with a :class:`ReportWarning`
naming the file and what is missing, and so is a health signal that is not one number;
the rest of the run is drawn. Only a run with no readable snapshot at all is an error.
"""

from __future__ import annotations

import os
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar, Union

import numpy as np

from lightning_filterviz.drawing.filter_frames import rgb_pictures
from lightning_filterviz.core.history import (
    EXAMPLES_PATTERN,
    FEATURE_VIS_PATTERN,
    HISTORY_DIR,
    HISTORY_FORMAT,
    HISTORY_PATTERN,
    history_files,
    load_history,
    pointed_history_dirs,
)

__all__ = [
    "EXPECTED_HISTORY",
    "HEALTH_SIGNALS",
    "ExamplesRecord",
    "FeatureVisRecord",
    "PathLike",
    "ReportError",
    "ReportWarning",
    "Run",
    "SnapshotRecord",
    "drift_series",
    "find_history_dirs",
    "fraction_series",
    "health_series",
    "load_runs",
    "one_line",
    "read_examples",
    "read_feature_vis",
    "read_feature_vis_file",
    "read_maps",
    "read_run",
    "read_snapshot",
    "run_label",
]

EXPECTED_HISTORY = f"{HISTORY_DIR.as_posix()}/{HISTORY_PATTERN} written by FilterMonitor"

# Each conv's health signals, as the history keys them (``<layer>/<signal>``, one number each;
# see lightning_filterviz.core.records.LayerHealth).
HEALTH_SIGNALS = ("effective_rank", "srank", "cka_to_first")

PathLike = Union[str, os.PathLike]
Record = TypeVar("Record", "SnapshotRecord", "ExamplesRecord", "FeatureVisRecord")


class ReportError(ValueError):
    """Bad input for a report; the message is one line, meant for the user."""


class ReportWarning(UserWarning):
    """Part of the history could not be read and is left out of the report (one line, naming the file)."""


@dataclass
class SnapshotRecord:
    """What the report needs of one history file (feature maps are dropped: they are the bulk).

    Attributes:
        path: the history file.
        step: the training step of the snapshot.
        layers: conv layer names, in the model's order.
        out_channels: layer -> number of filters of the conv.
        filters: layer -> drawn filters ``(F, C, kh, kw)`` float32, ``C`` in {1, 3}.
        drift: layer -> per-filter cosine distance from the initial weights.
        norm_ratio: layer -> per-filter weight norm over its initial norm.
        mean_activation: layer -> per-filter mean ``|activation|`` on the probe (only layers
            whose activation, or output before any, was captured).
        dead: layer -> dead filter indices (only layers with a ReLU-family activation).
        dormant: layer -> dormant filter indices (only layers whose activation was captured).
        grad_scores: layer -> each filter's gradient score, its mean ``|dL/dW_c|`` over the
            layer's average (only convs whose gradients were read for the snapshot: not the
            first snapshot, not a frozen conv, not in files written before gradient dormancy).
        grad_dormant: layer -> gradient-dormant filter indices (the same layers as ``grad_scores``).
        frozen: the convs whose weight does not require grad (never gradient-dormant).
        health: signal (one of :data:`HEALTH_SIGNALS`) -> layer -> its value (only layers whose
            probe features were finite, in files written since the signals were added).
            ``cka_to_first`` is NaN where no CKA could be computed (features that never vary,
            or a probe of another shape than the first snapshot's).
        kept_maps: the layers whose feature maps the file holds (read with :func:`read_maps`).
        signed: the layers whose statistics and maps are of the conv's output before any
            activation (no activation follows it), drawn around zero.
        problems: what the file lacks and the report leaves out, one line each.
    """

    path: Path
    step: int
    layers: list[str]
    out_channels: dict[str, int] = field(default_factory=dict)
    filters: dict[str, np.ndarray] = field(default_factory=dict)
    drift: dict[str, np.ndarray] = field(default_factory=dict)
    norm_ratio: dict[str, np.ndarray] = field(default_factory=dict)
    mean_activation: dict[str, np.ndarray] = field(default_factory=dict)
    dead: dict[str, np.ndarray] = field(default_factory=dict)
    dormant: dict[str, np.ndarray] = field(default_factory=dict)
    grad_scores: dict[str, np.ndarray] = field(default_factory=dict)
    grad_dormant: dict[str, np.ndarray] = field(default_factory=dict)
    frozen: set[str] = field(default_factory=set)
    health: dict[str, dict[str, float]] = field(default_factory=lambda: {signal: {} for signal in HEALTH_SIGNALS})
    kept_maps: set[str] = field(default_factory=set)
    signed: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


@dataclass
class ExamplesRecord:
    """One validation run's dataset examples (see :func:`~lightning_filterviz.core.history.write_examples_history`).

    Attributes:
        step: the training step of the validation run.
        indices: layer -> ``(F, k)`` dataset index of each example, ``-1`` where unknown.
        values: layer -> ``(F, k)`` the filter's peak on each example, ``-inf`` where missing.
        patches: layer -> ``(F, k, S, S, 3)`` ``uint8`` examples as drawn (``S`` 32, 16 in older files).
        problems: what the file lacks and the report leaves out, one line each.
    """

    step: int
    indices: dict[str, np.ndarray] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    patches: dict[str, np.ndarray] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


@dataclass
class FeatureVisRecord:
    """One set of feature visualizations, ``feature_vis_<step>.npz`` (see
    :func:`~lightning_filterviz.core.history.feature_vis_history_file`). Only what says which
    layers it holds is kept: the pictures are the bulk of a run's history (a filter's input-sized
    image per filter and validation run), so they are read again when drawn, with
    :func:`read_feature_vis`.

    Attributes:
        path: the file.
        step: the training step of the weights they were made from.
        filters: layer -> how many filters have a visualization, for the layers whose arrays are whole.
        problems: what the file lacks and the report leaves out, one line each.
    """

    path: Path
    step: int
    filters: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


@dataclass
class Run:
    """The history of one training run, snapshots sorted by step.

    Attributes:
        label: how the run is named on the page (its log dir, relative to the report's input).
        history_dir: the directory holding the history files.
        records: one per readable history file, by increasing step (files of one step in
            the order they were written).
        examples: one per validation run with dataset examples, by increasing step.
        feature_vis: one per set of feature visualizations, by increasing step.
        problems: the files skipped and the parts left out, one line each, naming the file.
    """

    label: str
    history_dir: Path
    records: list[SnapshotRecord]
    examples: list[ExamplesRecord] = field(default_factory=list)
    feature_vis: list[FeatureVisRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # Why each skipped file could not be read, as a ReportError says it.
    unreadable: list[str] = field(default_factory=list, repr=False)

    @property
    def layers(self) -> list[str]:
        """Every layer seen in any snapshot, in order of first appearance."""
        seen: dict[str, None] = {}
        for record in self.records:
            seen.update(dict.fromkeys(record.layers))
        return list(seen)

    @property
    def steps(self) -> list[int]:
        """The snapshot steps, increasing."""
        return [record.step for record in self.records]


# ---------------------------------------------------------------- finding and reading history


def load_runs(log_dir: PathLike) -> list[Run]:
    """Find and read every run under ``log_dir``.

    Args:
        log_dir: a history, filterviz, trainer log or parent directory.

    Returns:
        The runs, each with at least one snapshot. Each file skipped and each part left
        out (see :attr:`Run.problems`) is warned about, as a :class:`ReportWarning`.

    Raises:
        ReportError: ``log_dir`` is missing or not a directory, holds no history, or no
            history file under it can be read (the message says why the first one cannot).
    """
    root = Path(log_dir)
    if not root.exists():
        raise ReportError(f"{root} does not exist")
    if not root.is_dir():
        raise ReportError(f"{root} is not a directory")
    history_dirs = find_history_dirs(root)
    if not history_dirs:
        raise ReportError(f"no history under {root}: expected {EXPECTED_HISTORY}")
    runs = [read_run(directory, run_label(directory, root)) for directory in history_dirs]
    readable = [run for run in runs if run.records]
    if not readable:
        raise ReportError(next(iter(runs[0].unreadable), f"no snapshot in {runs[0].history_dir} can be read"))
    for run in runs:
        for problem in run.problems:
            warnings.warn(problem, ReportWarning, stacklevel=2)
    return readable


def find_history_dirs(log_dir: PathLike) -> list[Path]:
    """The history directories under ``log_dir``, sorted.

    ``log_dir`` may be a history directory itself, the ``filterviz`` directory above it, a
    trainer's log directory or any parent of several of those; or the directory of another
    logger of the same run, where a note points to the history.

    Args:
        log_dir: an existing directory.

    Returns:
        Directories that hold at least one ``step_*.npz`` file; empty when there is none.
    """
    root = Path(log_dir)
    # The direct cases first: rglob("filterviz/history") cannot see them when the input is
    # the history directory or the filterviz directory itself.
    candidates = [root, root / "history", *root.rglob(HISTORY_DIR.as_posix()), *pointed_history_dirs(root)]
    found: dict[Path, Path] = {}
    for candidate in candidates:
        if candidate.is_dir() and any(path.is_file() for path in candidate.glob(HISTORY_PATTERN)):
            found.setdefault(candidate.resolve(), candidate)
    return sorted(found.values())


def read_run(history_dir: Path, label: str) -> Run:
    """Read every history file of one run.

    Args:
        history_dir: a directory of ``step_*.npz`` files.
        label: the run's name on the page.

    Returns:
        The run, snapshots sorted by their step, then in the order written; the files that
        cannot be read are left out, each named in :attr:`Run.problems`.
    """
    run = Run(label=label, history_dir=history_dir, records=[])
    snapshots = _read_each(history_files(history_dir, HISTORY_PATTERN), read_snapshot, run)
    # A file whose every layer is damaged adds nothing but its problems, already noted.
    run.records = [record for record in snapshots if record.layers]
    run.examples = _read_each(history_files(history_dir, EXAMPLES_PATTERN), read_examples, run)
    run.feature_vis = _read_each(history_files(history_dir, FEATURE_VIS_PATTERN), read_feature_vis_file, run)
    # A stable sort by the recorded step keeps the order written among files of one step.
    run.records.sort(key=lambda record: record.step)
    run.examples.sort(key=lambda record: record.step)
    run.feature_vis.sort(key=lambda record: record.step)
    return run


def _read_each(paths: list[Path], read: Callable[[Path], Record], run: Run) -> list[Record]:
    """What ``read`` makes of each path; the run notes what could not be read, and what was left out."""
    records = []
    for path in paths:
        try:
            record = read(path)
        except ReportError as error:
            run.unreadable.append(str(error))
            run.problems.append(f"{error}; the file is skipped")
            continue
        records.append(record)
        run.problems.extend(record.problems)
    return records


def _step_and_layers(path: Path) -> tuple[dict[str, np.ndarray], int, list[str]]:
    """A validation run's file: its arrays, its step and the layers it names.

    Raises:
        ReportError: for a file that cannot be read, is not a history file, or lacks its
            step or its list of layers.
    """
    arrays = _load(path)
    missing = [key for key in ("step", "layers") if key not in arrays]
    if missing:
        raise ReportError(f"{path} is an incomplete history file: it lacks {', '.join(missing)}")
    return arrays, int(arrays["step"]), [str(name) for name in arrays["layers"]]


def read_examples(path: Path) -> ExamplesRecord:
    """Read one validation run's dataset examples; a layer whose arrays the file lacks is
    left out (named in :attr:`ExamplesRecord.problems`).

    Raises:
        ReportError: for a file that cannot be read, is not a history file, or lacks its
            step or its list of layers.
    """
    arrays, step, layers = _step_and_layers(path)
    record = ExamplesRecord(step=step)
    for layer in layers:
        lacking = [f"{layer}/{key}" for key in ("indices", "values", "patches") if f"{layer}/{key}" not in arrays]
        if lacking:
            record.problems.append(
                f"{path} lacks {', '.join(lacking)}: the dataset examples of {layer} at step {record.step} are left out"
            )
            continue
        record.indices[layer] = arrays[f"{layer}/indices"]
        record.values[layer] = arrays[f"{layer}/values"]
        record.patches[layer] = arrays[f"{layer}/patches"]
    return record


def read_feature_vis_file(path: Path) -> FeatureVisRecord:
    """Read which layers one set of feature visualizations holds, checking their arrays; a
    layer whose arrays the file lacks, or holds in other shapes than the writer's, is left out
    (named in :attr:`FeatureVisRecord.problems`).

    Raises:
        ReportError: for a file that cannot be read, is not a history file, or lacks its
            step or its list of layers.
    """
    arrays, step, layers = _step_and_layers(path)
    record = FeatureVisRecord(path=path, step=step)
    for layer in layers:
        problem = _feature_vis_problem(arrays, layer)
        if problem:
            record.problems.append(
                f"{path} {problem}: the feature visualizations of {layer} at step {record.step} are left out"
            )
            continue
        record.filters[layer] = len(arrays[f"{layer}/images"])
    return record


def read_feature_vis(record: FeatureVisRecord, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``layer``'s feature visualizations back from their file (:func:`read_feature_vis_file`
    keeps none: they are drawn one layer, or one filter, at a time).

    Args:
        record: a set whose :attr:`~FeatureVisRecord.filters` holds ``layer``.
        layer: the conv layer.

    Returns:
        ``(images, filters)``: the visualizations ``(F, H, W, 3)`` ``uint8`` (grey ones repeated
        over the three channels), filter ``i``'s at ``i``, and the filters they were made from,
        drawn as the history draws them, ``(F, C, kh, kw)`` float32 with ``C`` 1 or 3.

    Raises:
        ReportError: the file can no longer be read, or no longer holds them whole (it was
            replaced or damaged after the report read it).
    """
    try:
        with open(record.path, "rb") as handle, np.load(handle, allow_pickle=False) as data:
            arrays = {key: data[key] for key in (f"{layer}/images", f"{layer}/filters")}
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, zlib.error) as error:
        raise ReportError(
            f"{record.path} cannot be read again for the feature visualizations of {layer}: {one_line(error)}"
        ) from error
    problem = _feature_vis_problem(arrays, layer)
    if problem:
        raise ReportError(f"{record.path} cannot be read again for the feature visualizations of {layer}: it {problem}")
    return rgb_pictures(arrays[f"{layer}/images"]), arrays[f"{layer}/filters"].astype(np.float32, copy=False)


def _feature_vis_problem(arrays: dict[str, np.ndarray], layer: str) -> str:
    """What keeps a layer of a feature visualizations file out of the report ("" when nothing does)."""
    lacking = [f"{layer}/{key}" for key in ("images", "filters") if f"{layer}/{key}" not in arrays]
    if lacking:
        return f"lacks {', '.join(lacking)}"
    images, filters = arrays[f"{layer}/images"], arrays[f"{layer}/filters"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        return f"holds {layer}/images of shape {images.shape} and type {images.dtype}, not (F, H, W, 3 or 1) uint8"
    if filters.ndim != 4 or filters.shape[1] not in (1, 3) or filters.dtype.kind != "f" or len(filters) < len(images):
        return (
            f"holds {layer}/filters of shape {filters.shape} and type {filters.dtype}, "
            f"not the drawn filters (F, 1 or 3, kh, kw) of its {len(images)} images"
        )
    return ""


def read_snapshot(path: Path) -> SnapshotRecord:
    """Read one history file into a :class:`SnapshotRecord`.

    Args:
        path: a ``step_*.npz`` file.

    Returns:
        The snapshot's step, layers, filters and statistics; a layer whose filters or
        filter count the file lacks is left out (named in :attr:`SnapshotRecord.problems`).

    Raises:
        ReportError: the file is not a history file, is damaged, or lacks its step or its
            list of layers.
    """
    arrays = _load(path)
    try:
        return _record_from_arrays(path, arrays)
    except (KeyError, ValueError, TypeError) as error:
        raise ReportError(f"{path} is an incomplete history file: {one_line(error)}") from error


def read_maps(record: SnapshotRecord, layer: str) -> np.ndarray:
    """Read ``layer``'s feature maps back from the snapshot's file (:func:`read_snapshot` drops
    them: only the filter page needs them, of one layer).

    Args:
        record: a snapshot whose :attr:`~SnapshotRecord.kept_maps` holds ``layer``.
        layer: the conv layer.

    Returns:
        The first probe image's ``(channels, H, W)`` maps, as float32.

    Raises:
        ReportError: the file can no longer be read, or no longer holds the maps (it was
            replaced or damaged after the report read it).
    """
    try:
        # Only this array is read out of the archive; the others are not loaded again.
        with open(record.path, "rb") as handle, np.load(handle, allow_pickle=False) as data:
            return np.asarray(data[f"{layer}/maps"], dtype=np.float32)
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, zlib.error) as error:
        raise ReportError(f"{record.path} cannot be read again for the feature maps of {layer}: {one_line(error)}") from error


def _load(path: Path) -> dict[str, np.ndarray]:
    """One history file's arrays, or a ReportError naming it and what is wrong with it."""
    try:
        return load_history(path)
    except ValueError as error:  # load_history's foreign-file check, and NumPy's refusal of pickles
        raise ReportError(f"{path} is not a lightning_filterviz history file (format {HISTORY_FORMAT!r})") from error
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        raise ReportError(f"{path} is corrupt: {one_line(error)}") from error


def _record_from_arrays(path: Path, arrays: dict[str, np.ndarray]) -> SnapshotRecord:
    """Pick the report's arrays out of one loaded history file (KeyError without a step or layers)."""
    record = SnapshotRecord(path=path, step=int(arrays["step"]), layers=[])
    for name in (str(name) for name in arrays["layers"]):
        problem = _layer_problem(arrays, name)
        if problem:
            record.problems.append(f"{path} {problem}: {name} at step {record.step} is left out")
            continue
        record.layers.append(name)
        record.filters[name] = arrays[f"{name}/filters"]
        record.out_channels[name] = int(arrays[f"{name}/out_channels"])
        # Optional arrays: drift may be missing (older writers), the activation statistics
        # need a captured activation, and dead filters a ReLU-family one.
        optional = (
            ("drift", record.drift),
            ("weight_norm_ratio", record.norm_ratio),
            ("channel_mean_abs", record.mean_activation),
            ("dead", record.dead),
            ("dormant", record.dormant),
        )
        for key, target in optional:
            if f"{name}/{key}" in arrays:
                target[name] = arrays[f"{name}/{key}"]
        _read_health(arrays, name, record)
        _read_gradients(arrays, name, record)
        if f"{name}/maps" in arrays:
            record.kept_maps.add(name)
        # Statistics without a channel maximum are of a conv's output before any activation.
        if f"{name}/channel_mean_abs" in arrays and f"{name}/channel_max" not in arrays:
            record.signed.add(name)
    return record


def _read_health(arrays: dict[str, np.ndarray], name: str, record: SnapshotRecord) -> None:
    """Put the layer's health signals into ``record``; one that is not a single real number
    is left out, named in the record's problems (the layer's other arrays are still good)."""
    for signal in HEALTH_SIGNALS:
        key = f"{name}/{signal}"
        if key not in arrays:  # older files, and layers whose features were not finite
            continue
        value = arrays[key]
        if value.ndim != 0 or value.dtype.kind not in "iuf":  # signed, unsigned integer or float
            record.problems.append(
                f"{record.path} holds {key} of shape {value.shape} and type {value.dtype}, not one number: "
                f"the {signal} of {name} at step {record.step} is left out"
            )
            continue
        record.health[signal][name] = float(value)


def _read_gradients(arrays: dict[str, np.ndarray], name: str, record: SnapshotRecord) -> None:
    """Put the layer's gradient scores and gradient-dormant filters into ``record`` (files
    written before gradient dormancy, the first snapshot and frozen convs have none); scores
    that are not one number per filter are left out, named in the record's problems."""
    if bool(arrays.get(f"{name}/frozen", False)):
        record.frozen.add(name)
    scores, dormant = arrays.get(f"{name}/grad_scores"), arrays.get(f"{name}/grad_dormant")
    if scores is None or dormant is None:
        return
    if scores.ndim != 1 or scores.dtype.kind not in "iuf" or dormant.ndim != 1 or dormant.dtype.kind not in "iu":
        record.problems.append(
            f"{record.path} holds {name}/grad_scores of shape {scores.shape} and type {scores.dtype} and "
            f"{name}/grad_dormant of shape {dormant.shape} and type {dormant.dtype}, not one score per filter "
            f"and filter indices: the gradient dormancy of {name} at step {record.step} is left out"
        )
        return
    record.grad_scores[name] = scores.astype(np.float32, copy=False)
    record.grad_dormant[name] = dormant


def _layer_problem(arrays: dict[str, np.ndarray], name: str) -> str:
    """What keeps a layer of a history file out of the report ("" when nothing does)."""
    lacking = [f"{name}/{key}" for key in ("filters", "out_channels") if f"{name}/{key}" not in arrays]
    if lacking:
        return f"lacks {', '.join(lacking)}"
    filters = arrays[f"{name}/filters"]
    if filters.ndim != 4:
        return f"holds {name}/filters of shape {filters.shape}, not (F, C, kh, kw)"
    return ""


def run_label(history_dir: Path, root: Path) -> str:
    """Name a run by its trainer log dir relative to ``root`` (the report's input).

    Args:
        history_dir: the run's history directory.
        root: the directory the report was asked for.

    Returns:
        For ``root/a/version_0/filterviz/history``, ``a/version_0``; ``root``'s name for a
        history found at ``root`` itself.
    """
    log_dir = history_dir.parent.parent if history_dir.parts[-2:] == HISTORY_DIR.parts else history_dir
    try:
        relative = log_dir.resolve().relative_to(root.resolve())
    except ValueError:  # the input was the history or filterviz directory: the log dir is above it
        return str(log_dir)
    return relative.as_posix() if relative.parts else (root.resolve().name or str(root))


# ---------------------------------------------------------------- series for the charts


def fraction_series(run: Run, key: str) -> dict[str, tuple[list[int], list[float]]]:
    """Per layer, the steps and the fraction of its filters listed under ``key``.

    Args:
        run: the run.
        key: ``"dead"``, ``"dormant"`` or ``"grad_dormant"``.

    Returns:
        layer -> (steps, fractions) for the layers that have ``key`` in some snapshot (for
        ``"grad_dormant"``, the snapshots whose gradients were read).
    """
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in run.records:
        for name, indices in getattr(record, key).items():
            steps, fractions = series.setdefault(name, ([], []))
            steps.append(record.step)
            fractions.append(len(indices) / max(record.out_channels[name], 1))
    return series


def drift_series(run: Run) -> dict[str, tuple[list[int], list[float]]]:
    """Per layer, the steps and the mean drift of its filters (layers without drift are left out).

    Args:
        run: the run.

    Returns:
        layer -> (steps, mean drifts).
    """
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in run.records:
        for name, drift in record.drift.items():
            if drift.size == 0:
                continue
            steps, means = series.setdefault(name, ([], []))
            steps.append(record.step)
            means.append(float(np.mean(drift)))
    return series


def health_series(run: Run, signal: str) -> dict[str, tuple[list[int], list[float]]]:
    """Per layer, the steps and the values of one health signal.

    Args:
        run: the run.
        signal: one of :data:`HEALTH_SIGNALS`.

    Returns:
        layer -> (steps, values) for the layers that have the signal in some snapshot; a
        NaN (a CKA that could not be computed) is left out rather than drawn as a gap.
    """
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in run.records:
        for name, value in record.health[signal].items():
            if not np.isfinite(value):
                continue
            steps, values = series.setdefault(name, ([], []))
            steps.append(record.step)
            values.append(value)
    return series


def one_line(error: BaseException) -> str:
    """An exception as one line of text, for a one-line error message."""
    text = " ".join(str(error).split())
    return text or type(error).__name__
