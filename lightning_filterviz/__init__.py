"""See what a CNN learns while it learns: conv filters, feature maps and dead filters.

``FilterMonitor`` is a callback for the unified ``lightning`` package
(``lightning.pytorch``); when only ``pytorch_lightning`` is installed it is built on that
package instead. ``lightning_filterviz.pl.FilterMonitor`` is always the
``pytorch_lightning`` one. ``FilterVisualizer`` is the engine, for plain PyTorch loops.
"""

from lightning_filterviz.capture import LayerCapture, Snapshot, capture_snapshot
from lightning_filterviz.engine import FilterVisualizer
from lightning_filterviz.sinks import DirectorySink, TensorBoardSink

try:
    from lightning_filterviz.lightning import FilterMonitor
except ImportError:  # only pytorch_lightning is installed
    from lightning_filterviz.pl import FilterMonitor  # type: ignore[assignment]

__all__ = [
    "DirectorySink",
    "FilterMonitor",
    "FilterVisualizer",
    "LayerCapture",
    "Snapshot",
    "TensorBoardSink",
    "capture_snapshot",
]
