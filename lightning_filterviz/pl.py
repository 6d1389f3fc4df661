"""``FilterMonitor`` for the ``pytorch_lightning`` package."""

from pytorch_lightning.callbacks import Callback

from lightning_filterviz.integration.callback import _DOCSTRING, FilterMonitorLogic


# To the type checker the logic derives from lightning.pytorch's Callback, a twin of this one.
class FilterMonitor(FilterMonitorLogic, Callback):  # type: ignore[misc]
    __doc__ = _DOCSTRING


__all__ = ["FilterMonitor"]
