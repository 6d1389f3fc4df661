"""See what a CNN learns while it learns: conv filters, feature maps and dead filters.

``FilterMonitor`` is the Lightning callback: for the unified ``lightning`` package
(``lightning.pytorch``) when it is installed, otherwise for ``pytorch_lightning``.
``lightning_filterviz.lightning.FilterMonitor`` and ``lightning_filterviz.pl.FilterMonitor``
name one flavour explicitly. ``FilterVisualizer`` is the engine, for plain PyTorch loops;
importing it loads no Lightning package.
"""

from typing import Any

from lightning_filterviz.capture import LayerCapture, Snapshot, capture_snapshot
from lightning_filterviz.engine import FilterVisualizer
from lightning_filterviz.sinks import DirectorySink, TensorBoardSink

__all__ = [
    "DirectorySink",
    "FilterMonitor",
    "FilterVisualizer",
    "LayerCapture",
    "Snapshot",
    "TensorBoardSink",
    "capture_snapshot",
]


def __getattr__(name: str) -> Any:
    # Resolved on first use, so that the engine alone never imports a Lightning package.
    if name == "FilterMonitor":
        return _lightning_flavoured_monitor()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
