"""Feature visualizations made after training, from a Lightning checkpoint (``filterviz-report --feature-vis``).

A checkpoint saved with FilterMonitor attached holds the monitor's probe batch and the
import path of the LightningModule's class. The model is rebuilt with the class's
``load_from_checkpoint``, watched once to learn where each conv's activation is, and its
filters' visualizations are written as ``feature_vis_<step>.npz`` into the run's history,
where the report and the Filters tab read them like the ones made during training.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from lightning_filterviz.capture.probe import model_input
from lightning_filterviz.core.history import FEATURE_VIS_PATTERN, history_files
from lightning_filterviz.engine.visualizer import FEATURE_VIS_STEPS, FilterVisualizer
from lightning_filterviz.integration.probe_storage import is_stored_probe, rebuilt_probe
from lightning_filterviz.publishing.sinks.null import NullSink

__all__ = ["CheckpointError", "feature_vis_from_checkpoint"]

# The key of FilterMonitor's state in a checkpoint's "callbacks" starts with the class name.
_STATE_KEY_START = "FilterMonitor"


class CheckpointError(ValueError):
    """The checkpoint cannot give feature visualizations; the message says what to do."""


def feature_vis_from_checkpoint(
    checkpoint: Union[str, os.PathLike],
    history_dir: Union[str, os.PathLike],
    *,
    layers: Optional[Sequence[str]] = None,
    model_class: Optional[str] = None,
    steps: int = FEATURE_VIS_STEPS,
) -> Path:
    """Make the feature visualizations of a checkpoint's model and write them into ``history_dir``.

    Args:
        checkpoint: a Lightning checkpoint saved with FilterMonitor attached.
        history_dir: the run's history directory (``<log_dir>/filterviz/history``).
        layers: conv names or fnmatch patterns; ``None``: the first conv.
        model_class: the LightningModule's class as ``package.module:Class`` or
            ``path/to/file.py:Class``; ``None``: the one the checkpoint names.
        steps: optimization steps per visualization.

    Returns:
        The history file written, ``feature_vis_<step>.npz``.

    Raises:
        CheckpointError: if the checkpoint cannot be read, holds no FilterMonitor state, or
            its model class cannot be imported or loaded.
        ValueError: if a layer name matches no conv, or the probe is not a batch of images.
    """
    stored = _load(Path(checkpoint))
    state = _monitor_state(stored, Path(checkpoint))
    class_path = model_class or state.get("model_class")
    if not class_path:
        raise CheckpointError(
            f"{checkpoint} does not name its model's class (saved by an older version): pass "
            "--model package.module:Class or --model path/to/file.py:Class."
        )
    model = _load_model(_import_class(class_path), Path(checkpoint))
    probe = rebuilt_probe(state["probe"]) if is_stored_probe(state["probe"]) else state["probe"]
    step = int(stored.get("global_step", 0))
    before = set(history_files(history_dir, FEATURE_VIS_PATTERN))
    visualizer = FilterVisualizer(NullSink(), history_dir=history_dir, featvis_layers=layers)
    try:
        images = model_input(probe)
        # One unpublished snapshot teaches the engine where each conv's activation is.
        visualizer.snapshot(model, images, step, publish=False)
        visualizer.visualize_features(model, images, step, steps=steps)
    finally:
        visualizer.close()
    written = sorted(set(history_files(history_dir, FEATURE_VIS_PATTERN)) - before)
    if not written:
        raise CheckpointError(f"no feature visualization was written into {history_dir}.")
    return written[-1]


def _load(path: Path) -> dict[str, Any]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"cannot read the checkpoint {path}: {error}") from None
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{path} is not a Lightning checkpoint (it holds a {type(loaded).__name__}).")
    return loaded


def _monitor_state(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    states = [
        state
        for key, state in checkpoint.get("callbacks", {}).items()
        if str(key).startswith(_STATE_KEY_START) and isinstance(state, dict) and state.get("probe") is not None
    ]
    if not states:
        raise CheckpointError(
            f"{path} holds no FilterMonitor state with a probe batch: save the checkpoint with FilterMonitor "
            "among the Trainer's callbacks."
        )
    return states[0]


def _import_class(class_path: str) -> type:
    """``package.module:Class`` (imported with the current directory on the path) or
    ``path/to/file.py:Class`` (its directory put on the path, for its own imports)."""
    module_part, _, qualname = class_path.rpartition(":")
    if not module_part or not qualname:
        raise CheckpointError(f"--model must be package.module:Class or path/to/file.py:Class, got {class_path!r}.")
    try:
        if module_part.endswith(".py"):
            file = Path(module_part).resolve()
            sys.path.insert(0, str(file.parent))
            spec = importlib.util.spec_from_file_location(file.stem, file)
            if spec is None or spec.loader is None:
                raise ImportError(f"no Python file at {file}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[file.stem] = module
            spec.loader.exec_module(module)
        else:
            sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_part)
        found: Any = module
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError, OSError) as error:
        raise CheckpointError(
            f"cannot import the model class {class_path}: {error}. Pass --model path/to/file.py:Class "
            "(or package.module:Class importable from here)."
        ) from None
    if not isinstance(found, type):
        raise CheckpointError(f"{class_path} is not a class.")
    return found


def _load_model(cls: type, checkpoint: Path) -> nn.Module:
    load = getattr(cls, "load_from_checkpoint", None)
    if load is None:
        raise CheckpointError(f"{cls.__qualname__} is not a LightningModule: it has no load_from_checkpoint.")
    try:
        model = load(str(checkpoint), map_location="cpu")
    except Exception as error:  # the user's __init__ may raise anything
        raise CheckpointError(
            f"{cls.__qualname__}.load_from_checkpoint({checkpoint}) failed: {type(error).__name__}: {error}. "
            "Its __init__ arguments must be saved with save_hyperparameters()."
        ) from None
    return model.eval()
