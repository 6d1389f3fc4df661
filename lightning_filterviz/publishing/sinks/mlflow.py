"""MLflow, through an ``MLFlowLogger`` (``mlflow`` is imported only when one is attached)."""

from __future__ import annotations

from typing import Any, Mapping

from lightning_filterviz.core.png import EncodedImage
from lightning_filterviz.publishing.sinks.base import Sink
from lightning_filterviz.publishing.sinks.registry import sink_for_logger

__all__ = ["MLflowSink"]


@sink_for_logger("MLFlowLogger")
class MLflowSink(Sink):
    """MLflow, through an ``MLFlowLogger``: images through the client's ``log_image`` with
    ``key`` and ``step`` (MLflow's image view then has a step slider per tag), scalars through
    the logger's ``log_metrics``, tables and text as Markdown artifacts
    ``<tag>/step_<step>.md``.

    MLflow's ``log_image`` takes pixels and writes its own PNG and thumbnail; the calls are
    made on the writer thread (the MLflow client keeps no per-thread state).

    Args:
        logger: an ``MLFlowLogger``; its run is created here, if it has not been yet.

    Example::

        logger = MLFlowLogger(tracking_uri="sqlite:///mlflow.db")
        trainer = Trainer(logger=logger, callbacks=[FilterMonitor()])  # the monitor makes MLflowSink(logger)
    """

    takes_images = True

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self.client = logger.experiment  # creates the MLflow run here, on the training thread
        self.run_id = logger.run_id

    @classmethod
    def from_logger(cls, logger: Any) -> MLflowSink:
        return cls(logger)

    def add_images(self, images: Mapping[str, EncodedImage], step: int) -> None:
        for tag, image in images.items():
            self.client.log_image(self.run_id, image.rgb, key=tag, step=step)

    def add_scalars(self, values: Mapping[str, float], step: int) -> None:
        if values:
            self.logger.log_metrics(dict(values), step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.client.log_text(self.run_id, text, f"{tag}/step_{step:08d}.md")

    def flush(self) -> None:
        """Every call above has written its record when it returns."""
