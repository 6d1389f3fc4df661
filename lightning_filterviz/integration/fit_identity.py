"""Which model, data and log dir the previous fit used, to tell when a fit starts afresh."""

from __future__ import annotations

import weakref
from typing import Any, Optional

__all__ = ["FitIdentity"]


class FitIdentity:
    """The previous fit's model and data source, held weakly (they are never kept alive), and its log dir."""

    def __init__(self) -> None:
        self._model: Optional[weakref.ReferenceType[Any]] = None
        self._data_source: Optional[weakref.ReferenceType[Any]] = None
        self._log_dir: Optional[str] = None

    def new_model(self, model: Any) -> bool:
        """Note ``model`` as the one fitted now; whether an earlier fit was of another model."""
        previous = self._model() if self._model is not None else None
        changed = self._model is not None and previous is not model
        self._model = weakref.ref(model)
        return changed

    def new_data_source(self, source: Any) -> bool:
        """Note ``source`` as the fit's data now; whether an earlier fit had other data."""
        previous = self._data_source() if self._data_source is not None else None
        changed = self._data_source is not None and previous is not source
        try:
            self._data_source = weakref.ref(source) if source is not None else None
        except TypeError:  # an object without weak references: a change of data goes unnoticed
            self._data_source = None
        return changed

    def new_log_dir(self, log_dir: str) -> bool:
        """Note ``log_dir`` as where the fit logs now; whether an earlier fit logged elsewhere."""
        changed = self._log_dir is not None and log_dir != self._log_dir
        self._log_dir = log_dir
        return changed
