"""``FilterMonitor`` for the ``pytorch_lightning`` package."""

from pytorch_lightning.callbacks import Callback

from lightning_filterviz.callback import _DOCSTRING, FilterMonitorLogic


class FilterMonitor(FilterMonitorLogic, Callback):
    __doc__ = _DOCSTRING


__all__ = ["FilterMonitor"]
