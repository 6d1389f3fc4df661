"""See what a CNN learns while it learns: conv filters, feature maps and dead filters.

``FilterMonitor`` is the Lightning callback: for the unified ``lightning`` package
(``lightning.pytorch``) when it is installed, otherwise for ``pytorch_lightning``.
``lightning_filterviz.lightning.FilterMonitor`` and ``lightning_filterviz.pl.FilterMonitor``
name one flavour explicitly. ``FilterVisualizer`` is the engine, for plain PyTorch loops;
importing it loads no Lightning package. Every name is imported on first use, so that
``build_report`` and ``load_history`` load no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "CapturedSnapshot",
    "CometSink",
    "DirectorySink",
    "FilterMonitor",
    "FilterVisualizer",
    "LayerCapture",
    "LoggerMetricsSink",
    "MLflowSink",
    "NullSink",
    "PendingSnapshot",
    "Sink",
    "SinkGroup",
    "Snapshot",
    "TensorBoardSink",
    "WandbSink",
    "build_report",
    "capture_snapshot",
    "load_history",
    "sink_for_logger",
]

# Public name -> the module that defines it.
_HOMES = {
    "CapturedSnapshot": "lightning_filterviz.core.records",
    "PendingSnapshot": "lightning_filterviz.engine.delivery",
    "CometSink": "lightning_filterviz.publishing.sinks.comet",
    "DirectorySink": "lightning_filterviz.publishing.sinks.directory",
    "FilterVisualizer": "lightning_filterviz.engine.visualizer",
    "LayerCapture": "lightning_filterviz.core.records",
    "LoggerMetricsSink": "lightning_filterviz.publishing.sinks.metrics",
    "MLflowSink": "lightning_filterviz.publishing.sinks.mlflow",
    "NullSink": "lightning_filterviz.publishing.sinks.null",
    "Sink": "lightning_filterviz.publishing.sinks.base",
    "SinkGroup": "lightning_filterviz.publishing.sinks.group",
    "Snapshot": "lightning_filterviz.core.records",
    "TensorBoardSink": "lightning_filterviz.publishing.sinks.tensorboard",
    "WandbSink": "lightning_filterviz.publishing.sinks.wandb",
    "build_report": "lightning_filterviz.report.build",
    "capture_snapshot": "lightning_filterviz.capture.probe_capture",
    "load_history": "lightning_filterviz.core.history",
    "sink_for_logger": "lightning_filterviz.publishing.sinks.registry",
}


def __getattr__(name: str) -> Any:
    if name == "FilterMonitor":
        return _lightning_flavoured_monitor()
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


def _lightning_flavoured_monitor() -> type:
    try:
        from lightning_filterviz.lightning import FilterMonitor
    except ModuleNotFoundError as error:
        if error.name is None or not error.name.startswith("lightning"):
            raise
    else:
        return FilterMonitor
    try:
        from lightning_filterviz.pl import FilterMonitor as PLFilterMonitor
    except ModuleNotFoundError as error:
        if error.name is None or not error.name.startswith("pytorch_lightning"):
            raise
        raise ModuleNotFoundError(
            "FilterMonitor is a Lightning callback and needs `lightning` or `pytorch_lightning`: "
            "pip install 'lightning_filterviz[lightning]' (or '[pytorch-lightning]'). "
            "FilterVisualizer works without either."
        ) from error
    return PLFilterMonitor
