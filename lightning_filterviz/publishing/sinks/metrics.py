"""Scalars through a Lightning logger's ``log_metrics``: what a ``CSVLogger`` gets, and any
logger that has no sink of its own (see :mod:`~lightning_filterviz.publishing.sinks.registry`)."""

from __future__ import annotations

import collections
from typing import Any, Mapping

from lightning_filterviz.publishing.sinks.base import Sink
from lightning_filterviz.publishing.sinks.registry import sink_for_logger

__all__ = ["LoggerMetricsSink"]


@sink_for_logger("CSVLogger")
class LoggerMetricsSink(Sink):
    """Scalars through a Lightning logger's ``log_metrics``, beside the run's own metrics;
    images and text are left to other sinks.

    The scalars wait until :meth:`on_training_thread`, which the engine calls on the training
    thread: a logger such as ``CSVLogger`` keeps its rows in a list that the trainer saves
    and clears from that thread, and a row added from another thread at that moment is lost.

    Args:
        logger: a Lightning logger.

    Example::

        sink = LoggerMetricsSink(CSVLogger("logs"))
        sink.add_scalar("filterviz/drift/conv1", 0.5, step=3)
        sink.on_training_thread()  # now in logs/lightning_logs/version_0/metrics.csv, once the logger saves
    """

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self._waiting: collections.deque[tuple[dict[str, float], int]] = collections.deque()

    @classmethod
    def from_logger(cls, logger: Any) -> LoggerMetricsSink:
        return cls(logger)

    def add_scalars(self, values: Mapping[str, float], step: int) -> None:
        if values:
            self._waiting.append(({tag: float(value) for tag, value in values.items()}, step))

    def on_training_thread(self) -> None:
        while self._waiting:
            values, step = self._waiting.popleft()
            self.logger.log_metrics(values, step)
