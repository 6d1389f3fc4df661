"""The history on disk: one NPZ file of small arrays per snapshot, and where a run keeps them.

This module owns the file format and the path, for the writer and for the report alike.
It needs NumPy only, so that reading a run's history loads no torch.

A history file is never written over another: when its name is taken (an earlier fit into
the same log directory, a second snapshot at the same step) it is saved as
``step_<step>-2.npz``, ``-3``, ... (see :mod:`lightning_filterviz.core.files`), and
:func:`history_files` lists a directory's files by step, then in the order they were written.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

import numpy as np

from lightning_filterviz.core.files import copy_order, replace_own_file, write_new_file
from lightning_filterviz.core.filters import displayed_filters
from lightning_filterviz.core.records import HistoryFile

if TYPE_CHECKING:
    from lightning_filterviz.core.records import Snapshot

__all__ = [
    "FEATURE_VIS_PATTERN",
    "HISTORY_DIR",
    "HISTORY_POINTER",
    "HISTORY_FORMAT",
    "HISTORY_PATTERN",
    "HistoryWriter",
    "history_arrays",
    "history_dir_of",
    "history_files",
    "load_history",
    "point_to_history",
    "pointed_history_dirs",
]

HISTORY_FORMAT = "lightning_filterviz.history/1"
HISTORY_PATTERN = "step_*.npz"
EXAMPLES_PATTERN = "validation_examples_*.npz"
FEATURE_VIS_PATTERN = "feature_vis_*.npz"
# Where a run's history lies, relative to its log directory.
HISTORY_DIR = Path("filterviz", "history")
# The step in a history file's name: ``step_00000010.npz``, ``validation_examples_00000010-2.npz``.
_STEP_IN_NAME = re.compile(r"_(\d+)(?:-\d+)?\.npz$")


# Left in another logger's directory, naming where the run's history went instead.
HISTORY_POINTER = Path("filterviz", "history_location.txt")


def history_dir_of(log_dir: Union[str, os.PathLike]) -> Path:
    """The history directory of a run logged to ``log_dir``."""
    return Path(log_dir) / HISTORY_DIR


def point_to_history(log_dir: Union[str, os.PathLike], history_dir: Union[str, os.PathLike]) -> Path:
    """Leave a note in ``log_dir`` saying where the run's history lies (for ``filterviz-report``)."""
    pointer = Path(log_dir) / HISTORY_POINTER
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.write_text(f"{Path(history_dir).resolve()}\n", encoding="utf-8")
    return pointer


def pointed_history_dirs(root: Union[str, os.PathLike]) -> list[Path]:
    """The history directories that notes under ``root`` point to (see :func:`point_to_history`)."""
    notes = [Path(root) / HISTORY_POINTER, *Path(root).rglob(HISTORY_POINTER.as_posix())]
    targets = {Path(note.read_text(encoding="utf-8").strip()) for note in notes if note.is_file()}
    return sorted(target for target in targets if target.is_dir())


def history_arrays(snapshot: Snapshot, drawn: Optional[Mapping[str, np.ndarray]] = None) -> dict[str, np.ndarray]:
    """One snapshot as plain arrays for an NPZ file (no objects, so ``allow_pickle=False`` loads it).

    ``drawn`` may give, per layer, what :func:`displayed_filters` returns for its filters,
    when it was already computed to draw them.

    Keys: ``format``, ``step``, ``layers`` and, per layer, ``<layer>/filters`` (the drawn
    part of the first ``max_filters`` filters), ``<layer>/drift``, ``<layer>/weight_norm_ratio``,
    ``<layer>/out_channels`` and, where the probe saw the conv's activation (or, for a conv
    without one, its output through normalization), ``<layer>/channel_mean_abs``,
    ``<layer>/dormant``, (with an activation) ``<layer>/channel_max``, (ReLU family)
    ``<layer>/dead`` and, in the snapshots that draw the views (the first and every ``views_every``-th)
    and in the trained model's last look at the end of a run, ``<layer>/maps`` (the first
    probe image's feature maps, float16): they are most of a file's bytes, and the
    statistics are what a run's history is read for. Where the layer's probe features were
    finite: ``<layer>/effective_rank``, ``<layer>/srank`` and ``<layer>/cka_to_first`` (see
    :class:`~lightning_filterviz.core.records.LayerHealth`). Where the conv's gradients were
    read for the snapshot: ``<layer>/grad_scores`` (every filter's gradient score, float32)
    and ``<layer>/grad_dormant`` (the gradient-dormant filters); ``<layer>/frozen`` (``True``)
    for a conv whose weight does not require grad.
    """
    arrays: dict[str, np.ndarray] = {
        "format": np.array(HISTORY_FORMAT),
        "step": np.array(snapshot.step, dtype=np.int64),
        "layers": np.array(list(snapshot.layers), dtype=np.str_),
    }
    drawn = drawn or {}
    for name, layer in snapshot.layers.items():
        filters = drawn[name] if name in drawn else displayed_filters(layer.weight.numpy(), layer.rgb)
        arrays[f"{name}/filters"] = np.asarray(filters, dtype=np.float32)
        arrays[f"{name}/out_channels"] = np.array(layer.out_channels, dtype=np.int64)
        if name in snapshot.drift:
            arrays[f"{name}/drift"] = snapshot.drift[name].numpy()
            arrays[f"{name}/weight_norm_ratio"] = snapshot.weight_norm_ratio[name].numpy()
        if layer.channel_mean_abs is not None and layer.maps is not None:
            if layer.channel_max is not None:  # a conv with an activation
                arrays[f"{name}/channel_max"] = layer.channel_max.numpy()
            arrays[f"{name}/channel_mean_abs"] = layer.channel_mean_abs.numpy()
            if snapshot.draw_views:
                arrays[f"{name}/maps"] = layer.maps[0].numpy().astype(np.float16)
        if name in snapshot.dormant_filters:
            arrays[f"{name}/dormant"] = np.array(snapshot.dormant_filters[name], dtype=np.int64)
        if name in snapshot.dead_filters:
            arrays[f"{name}/dead"] = np.array(snapshot.dead_filters[name], dtype=np.int64)
        if name in snapshot.health:
            health = snapshot.health[name]
            arrays[f"{name}/effective_rank"] = np.array(health.effective_rank, dtype=np.float64)
            arrays[f"{name}/srank"] = np.array(health.srank, dtype=np.int64)
            arrays[f"{name}/cka_to_first"] = np.array(health.cka_to_first, dtype=np.float64)
        if name in snapshot.grad_scores:
            arrays[f"{name}/grad_scores"] = snapshot.grad_scores[name].numpy().astype(np.float32)
            arrays[f"{name}/grad_dormant"] = np.array(snapshot.grad_dormant_filters[name], dtype=np.int64)
        if layer.frozen:
            arrays[f"{name}/frozen"] = np.array(True)
    return arrays


def snapshot_history_file(snapshot: Snapshot, drawn: Optional[Mapping[str, np.ndarray]] = None) -> HistoryFile:
    """One snapshot's file, ``step_<step>.npz``: :func:`history_arrays` (``drawn`` as there)."""
    return HistoryFile(f"step_{snapshot.step:08d}.npz", history_arrays(snapshot, drawn))


def write_history_file(
    directory: Union[str, os.PathLike], file: HistoryFile, own: Optional[Path] = None
) -> Path:
    """Save ``file`` in ``directory`` (created when missing), whole or not at all: it is built
    in memory (one write instead of a seek per array) and linked into place, so a reader
    never sees half of one, and never over another file.

    Args:
        directory: the history directory.
        file: what to save.
        own: for a file that ``completes`` the one saved under its name, the path this run
            saved that one at (it may be a copy, ``step_00000010-2.npz``): it is replaced,
            whole. ``None``: the file is saved as a new one.

    Returns:
        The path written: ``own``, or ``<directory>/<file.name>``, or, when that name was
        taken, the first free copy of it (``step_00000010-2.npz``).

    Raises:
        OSError: if it cannot be written; no partial file is left behind.
    """
    if own is not None:
        return replace_own_file(own, _npz_bytes(file.arrays))
    return _write_whole(Path(directory) / file.name, file.arrays)


def history_files(directory: Union[str, os.PathLike], pattern: str = HISTORY_PATTERN) -> list[Path]:
    """The history files in ``directory`` matching ``pattern``, by the step in their name,
    then in the order they were written (``step_00000010.npz`` before ``step_00000010-2.npz``).

    Args:
        directory: a history directory.
        pattern: :data:`HISTORY_PATTERN` (snapshots) or ``EXAMPLES_PATTERN`` (validation runs).

    Returns:
        The files; empty when there is none.
    """
    return sorted((path for path in Path(directory).glob(pattern) if path.is_file()), key=_step_then_copy)


class HistoryWriter:
    """Saves each snapshot as ``<directory>/step_<step>.npz`` (see :func:`write_history_file`).

    Args:
        directory: created when missing.
    """

    def __init__(self, directory: Union[str, os.PathLike]) -> None:
        self.directory = Path(directory)

    def write(self, snapshot: Snapshot, drawn: Optional[Mapping[str, np.ndarray]] = None) -> Path:
        """Save one snapshot; ``drawn`` as in :func:`history_arrays`.

        Returns:
            The path written; a snapshot at a step already saved gets ``step_<step>-2.npz``.
        """
        return write_history_file(self.directory, snapshot_history_file(snapshot, drawn))


def examples_history_file(step: int, examples: Mapping[str, Any], tiles: Mapping[str, np.ndarray]) -> HistoryFile:
    """One validation run's dataset examples as ``validation_examples_<step>.npz``:
    ``layers`` (names), and per layer ``<layer>/values`` ``(F, k)`` (``-inf`` where a filter
    has fewer examples), ``<layer>/indices`` ``(F, k)`` (``-1`` where unknown),
    ``<layer>/positions`` ``(F, k, 2)`` input pixels ``(y, x)`` and ``<layer>/patches``
    ``(F, k, h, w, 3)`` ``uint8``, the examples as drawn (context window, outline, the
    filter's scale), at the window's own pixels (32 a side; older files hold the
    receptive field alone, at 16).

    Args:
        step: the training step of the validation run.
        examples: conv name -> :class:`~lightning_filterviz.core.records.LayerExamples` on the host.
        tiles: conv name -> its drawn examples ``(F, k, h, w, 3)`` ``uint8``.
    """
    arrays: dict[str, np.ndarray] = {
        "format": np.array(HISTORY_FORMAT),
        "step": np.array(step, dtype=np.int64),
        "layers": np.array(list(examples), dtype=np.str_),
    }
    for name, found in examples.items():
        arrays[f"{name}/values"] = found.values.numpy()
        arrays[f"{name}/indices"] = found.indices.numpy()
        arrays[f"{name}/positions"] = found.positions.numpy()
        arrays[f"{name}/patches"] = np.ascontiguousarray(tiles[name], dtype=np.uint8)
    return HistoryFile(f"validation_examples_{step:08d}.npz", arrays)


def feature_vis_history_file(step: int, images: Mapping[str, np.ndarray], filters: Mapping[str, np.ndarray]) -> HistoryFile:
    """One set of feature visualizations as ``feature_vis_<step>.npz``: ``layers`` (names),
    and per layer ``<layer>/images`` ``uint8`` ``(F, H, W, 3 or 1)`` as displayed, filter
    ``i``'s at ``i``, and ``<layer>/filters``, the drawn filters at that step (what
    :func:`displayed_filters` returns, float32) to draw beside them.

    Args:
        step: the training step of the weights they were made from.
        images: conv name -> its visualizations.
        filters: conv name -> its drawn filters.
    """
    arrays: dict[str, np.ndarray] = {
        "format": np.array(HISTORY_FORMAT),
        "step": np.array(step, dtype=np.int64),
        "layers": np.array(list(images), dtype=np.str_),
    }
    for name, pictures in images.items():
        arrays[f"{name}/images"] = np.ascontiguousarray(pictures, dtype=np.uint8)
        arrays[f"{name}/filters"] = np.asarray(filters[name], dtype=np.float32)
    return HistoryFile(f"feature_vis_{step:08d}.npz", arrays)


def _write_whole(path: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    # A file appears whole or not at all: built in memory, then written and linked into place.
    return write_new_file(path, _npz_bytes(arrays))


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> memoryview:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # keys are array names
    return buffer.getbuffer()


def _step_then_copy(path: Path) -> tuple[int, int, str]:
    # The step from the name, not the name itself: 8 digits in the name overflow past 10**8 steps.
    found = _STEP_IN_NAME.search(path.name)
    name, copy = copy_order(path)
    return (int(found.group(1)) if found else -1), copy, name


def load_history(path: Union[str, os.PathLike]) -> dict[str, np.ndarray]:
    """Read one history file back (``allow_pickle=False``).

    Raises:
        ValueError: if the file is not a lightning_filterviz history file.
    """
    # Opened here, so that it is closed also when NumPy cannot read it (a truncated file).
    with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    if str(arrays.get("format", "")) != HISTORY_FORMAT:
        raise ValueError(f"{path} is not a lightning_filterviz history file (no format {HISTORY_FORMAT!r}).")
    return arrays
