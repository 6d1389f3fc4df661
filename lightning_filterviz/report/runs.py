"""The runs a report shows: history files found and read back, and the series it charts.

Each snapshot lies in ``<log dir>/filterviz/history/step_<step>.npz`` (see
:mod:`lightning_filterviz.core.history`, which owns the format). :func:`load_runs` finds every
run under a directory and reads its snapshots, keeping what the page needs and dropping
the feature maps; :func:`fraction_series` and :func:`drift_series` turn a run into the
lines of its charts. NumPy only: the report loads no torch.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from lightning_filterviz.core.history import (
    EXAMPLES_PATTERN,
    HISTORY_DIR,
    HISTORY_FORMAT,
    HISTORY_PATTERN,
    load_history,
    pointed_history_dirs,
)

__all__ = [
    "EXPECTED_HISTORY",
    "ExamplesRecord",
    "PathLike",
    "ReportError",
    "Run",
    "SnapshotRecord",
    "drift_series",
    "find_history_dirs",
    "fraction_series",
    "load_runs",
    "one_line",
    "read_examples",
    "read_run",
    "read_snapshot",
    "run_label",
]

EXPECTED_HISTORY = f"{HISTORY_DIR.as_posix()}/{HISTORY_PATTERN} written by FilterMonitor"

PathLike = Union[str, os.PathLike]


class ReportError(ValueError):
    """Bad input for a report; the message is one line, meant for the user."""


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
        dead: layer -> dead filter indices (only layers with a ReLU-family activation).
        dormant: layer -> dormant filter indices (only layers whose activation was captured).
    """

    path: Path
    step: int
    layers: list[str]
    out_channels: dict[str, int] = field(default_factory=dict)
    filters: dict[str, np.ndarray] = field(default_factory=dict)
    drift: dict[str, np.ndarray] = field(default_factory=dict)
    dead: dict[str, np.ndarray] = field(default_factory=dict)
    dormant: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class ExamplesRecord:
    """One validation run's dataset examples (see :func:`~lightning_filterviz.core.history.write_examples_history`).

    Attributes:
        step: the training step of the validation run.
        indices: layer -> ``(F, k)`` dataset index of each example, ``-1`` where unknown.
        values: layer -> ``(F, k)`` the filter's peak on each example, ``-inf`` where missing.
        patches: layer -> ``(F, k, S, S, 3)`` ``uint8`` drawn patches.
    """

    step: int
    indices: dict[str, np.ndarray] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    patches: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Run:
    """The history of one training run, snapshots sorted by step.

    Attributes:
        label: how the run is named on the page (its log dir, relative to the report's input).
        history_dir: the directory holding the history files.
        records: one per history file, by increasing step.
        examples: one per validation run with dataset examples, by increasing step.
    """

    label: str
    history_dir: Path
    records: list[SnapshotRecord]
    examples: list[ExamplesRecord] = field(default_factory=list)

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
        The runs, each with at least one snapshot.

    Raises:
        ReportError: ``log_dir`` is missing or not a directory, holds no history, or a
            history file cannot be read.
    """
    root = Path(log_dir)
    if not root.exists():
        raise ReportError(f"{root} does not exist")
    if not root.is_dir():
        raise ReportError(f"{root} is not a directory")
    history_dirs = find_history_dirs(root)
    if not history_dirs:
        raise ReportError(f"no history under {root}: expected {EXPECTED_HISTORY}")
    return [read_run(directory, run_label(directory, root)) for directory in history_dirs]


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
        The run, snapshots sorted by their step.

    Raises:
        ReportError: for a history file that cannot be read.
    """
    records = [read_snapshot(path) for path in sorted(history_dir.glob(HISTORY_PATTERN)) if path.is_file()]
    # Sort by the recorded step, not the name: 8 digits in the name overflow past 10**8 steps.
    records.sort(key=lambda record: record.step)
    examples = [read_examples(path) for path in sorted(history_dir.glob(EXAMPLES_PATTERN)) if path.is_file()]
    examples.sort(key=lambda record: record.step)
    return Run(label=label, history_dir=history_dir, records=records, examples=examples)


def read_examples(path: Path) -> ExamplesRecord:
    """Read one validation run's dataset examples.

    Raises:
        ReportError: for a file that cannot be read or is not a history file.
    """
    try:
        arrays = load_history(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        raise ReportError(f"cannot read {path}: {one_line(error)}") from error
    record = ExamplesRecord(step=int(arrays["step"]))
    for layer in (str(name) for name in arrays["layers"]):
        record.indices[layer] = arrays[f"{layer}/indices"]
        record.values[layer] = arrays[f"{layer}/values"]
        if f"{layer}/patches" in arrays:
            record.patches[layer] = arrays[f"{layer}/patches"]
    return record


def read_snapshot(path: Path) -> SnapshotRecord:
    """Read one history file into a :class:`SnapshotRecord`.

    Args:
        path: a ``step_*.npz`` file.

    Returns:
        The snapshot's step, layers, filters and statistics.

    Raises:
        ReportError: the file is not a history file, is damaged, or lacks a required array.
    """
    try:
        arrays = load_history(path)
    except ValueError as error:  # load_history's foreign-file check, and NumPy's refusal of pickles
        raise ReportError(f"{path} is not a lightning_filterviz history file (format {HISTORY_FORMAT!r})") from error
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ReportError(f"{path} is corrupt: {one_line(error)}") from error
    try:
        return _record_from_arrays(path, arrays)
    except (KeyError, ValueError, TypeError) as error:
        raise ReportError(f"{path} is an incomplete history file: {one_line(error)}") from error


def _record_from_arrays(path: Path, arrays: dict[str, np.ndarray]) -> SnapshotRecord:
    """Pick the report's arrays out of one loaded history file (KeyError when one is missing)."""
    record = SnapshotRecord(path=path, step=int(arrays["step"]), layers=[str(name) for name in arrays["layers"]])
    for name in record.layers:
        filters = arrays[f"{name}/filters"]
        if filters.ndim != 4:
            raise ValueError(f"{name}/filters has shape {filters.shape}, expected (F, C, kh, kw)")
        record.filters[name] = filters
        record.out_channels[name] = int(arrays[f"{name}/out_channels"])
        # Optional arrays: drift may be missing (older writers) and dead/dormant need an activation.
        for key, target in (("drift", record.drift), ("dead", record.dead), ("dormant", record.dormant)):
            if f"{name}/{key}" in arrays:
                target[name] = arrays[f"{name}/{key}"]
    return record


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
        key: ``"dead"`` or ``"dormant"``.

    Returns:
        layer -> (steps, fractions) for the layers that have ``key`` in some snapshot.
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


def one_line(error: BaseException) -> str:
    """An exception as one line of text, for a one-line error message."""
    text = " ".join(str(error).split())
    return text or type(error).__name__
