"""``FilterMonitor`` for the unified ``lightning`` package (``lightning.pytorch``)."""

from lightning.pytorch.callbacks import Callback

from lightning_filterviz.integration.callback import _DOCSTRING, FilterMonitorLogic


class FilterMonitor(FilterMonitorLogic, Callback):
    __doc__ = _DOCSTRING


__all__ = ["FilterMonitor"]
