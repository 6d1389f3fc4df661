"""A sink for each of a trainer's loggers: TensorBoard, Weights & Biases, MLflow, CSV, any other.

Lightning's loggers share ``log_metrics`` but no image API, so each kind gets its own sink;
:func:`sinks_for_loggers` picks them. The tags are the same ``filterviz/...`` keys in every
logger. Neither ``wandb`` nor ``mlflow`` is imported unless its logger is attached.
"""

from __future__ import annotations

import collections
import html
import os
import shutil
import tempfile
from typing import Any, Mapping, Optional, Sequence

from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn

from lightning_filterviz.core.png import EncodedImage
from lightning_filterviz.core.records import Table
from lightning_filterviz.publishing.sinks.group import SinkGroup
from lightning_filterviz.publishing.sinks.base import DirectorySink, Sink, TensorBoardSink, is_summary_writer
from lightning_filterviz.core.tiles import Image

__all__ = ["LoggerMetricsSink", "MLflowSink", "WandbSink", "sinks_for_loggers"]

# Lightning logger classes (either package, or a subclass) -> the kind of sink they get.
LOGGER_KINDS = {
    "TensorBoardLogger": "tensorboard",
    "WandbLogger": "wandb",
    "MLFlowLogger": "mlflow",
    "CSVLogger": "csv",
}
# The folder, under a run's directory, of the PNG files written where no logger takes images.
PNG_FOLDER = "filterviz"


def sinks_for_loggers(loggers: Sequence[Any], log_dir: str) -> tuple[SinkGroup, str]:
    """One sink per logger, all of them in one group.

    TensorBoard, W&B and MLflow loggers get the images, scalars and tables in their own
    records. A ``CSVLogger``, a logger of another kind, or no logger at all, gets PNG files
    (and a CSV of scalars) under ``<dir>/filterviz``; every logger but TensorBoard also gets
    the scalars through its ``log_metrics``, beside the run's own metrics.

    Args:
        loggers: ``trainer.loggers``.
        log_dir: the trainer's log directory, used where no logger has a directory of its own.

    Returns:
        The group of sinks, and the directory that keeps the run's other outputs (the
        history files): the first TensorBoard logger's, else the first CSV logger's, else ``log_dir``.
    """
    sinks: dict[str, Sink] = {}
    without_images: list[str] = []
    for logger in loggers:
        kind = _logger_kind(logger)
        name = _unique_name(type(logger).__name__, sinks)
        if kind == "tensorboard":
            sinks[name] = TensorBoardSink(logger.experiment)
        elif kind == "wandb":
            sinks[name] = WandbSink(logger)
        elif kind == "mlflow":
            sinks[name] = MLflowSink(logger)
        else:
            sinks[name] = LoggerMetricsSink(logger)
            if kind != "csv":
                without_images.append(name)
    output_dir = _first_log_dir(loggers, "tensorboard") or _first_log_dir(loggers, "csv") or log_dir
    if not any(isinstance(sink, (TensorBoardSink, WandbSink, MLflowSink)) for sink in sinks.values()) or without_images:
        directory = os.path.join(output_dir, PNG_FOLDER)
        sinks["PNG files"] = DirectorySink(directory)
        _explain_png_files(directory, without_images)
    return SinkGroup(sinks), output_dir


def _first_log_dir(loggers: Sequence[Any], kind: str) -> Optional[str]:
    matching = (logger for logger in loggers if _logger_kind(logger) == kind and getattr(logger, "log_dir", None))
    return next((logger.log_dir for logger in matching), None)


def _logger_kind(logger: Any) -> Optional[str]:
    for cls in type(logger).__mro__:
        if cls.__name__ in LOGGER_KINDS:
            return LOGGER_KINDS[cls.__name__]
    # A logger of its own whose experiment is a SummaryWriter is TensorBoard all the same.
    return "tensorboard" if is_summary_writer(getattr(logger, "experiment", None)) else None


def _unique_name(name: str, taken: Mapping[str, Any]) -> str:
    number, unique = 1, name
    while unique in taken:
        number += 1
        unique = f"{name} #{number}"
    return unique


def _explain_png_files(directory: str, without_images: list[str]) -> None:
    if without_images:
        rank_zero_warn(
            f"filterviz: {', '.join(without_images)} cannot take the snapshot images yet (supported: TensorBoard, "
            f"W&B, MLflow); it gets the scalars through `log_metrics`, and the images go to PNG files in {directory}."
        )
    else:
        rank_zero_info(
            f"filterviz: no TensorBoard, W&B or MLflow logger; writing PNG files and scalars.csv to {directory}"
        )


class LoggerMetricsSink:
    """Scalars through a Lightning logger's ``log_metrics``, beside the run's own metrics;
    images and text are left to other sinks.

    The scalars wait until :meth:`on_training_thread`, which the engine calls on the training
    thread: a logger such as ``CSVLogger`` keeps its rows in a list that the trainer saves
    and clears from that thread, and a row added from another thread at that moment is lost.

    Args:
        logger: a Lightning logger.
    """

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self._waiting: collections.deque[tuple[dict[str, float], int]] = collections.deque()

    def add_image(self, tag: str, image: Image, step: int) -> None:
        pass

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.add_scalars({tag: value}, step)

    def add_scalars(self, values: Mapping[str, float], step: int) -> None:
        self._waiting.append(({tag: float(value) for tag, value in values.items()}, step))

    def add_text(self, tag: str, text: str, step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def on_training_thread(self) -> None:
        while self._waiting:
            values, step = self._waiting.popleft()
            self.logger.log_metrics(values, step)


class WandbSink:
    """Weights & Biases, through a ``WandbLogger``: each snapshot in one ``log`` call at the
    trainer's step, its images as ``wandb.Image`` (one media panel per tag, with a step
    slider), its scalars beside them and its tables as ``wandb.Table``.

    The images are the PNG files already encoded for the other sinks (W&B copies them into
    the run; it does not encode again). Everything costly happens on the writer thread,
    down to copying each file into the run's media folder; the one ``log`` call is made on
    the training thread, from :meth:`on_training_thread`, because ``wandb`` does not
    support logging to one run from two threads at once.

    Args:
        logger: a ``WandbLogger``.
    """

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self.run = logger.experiment  # starts the W&B run here, on the training thread, as the trainer would
        self._staging = tempfile.mkdtemp(prefix="filterviz-wandb-")
        self._step: Optional[int] = None
        self._payload: dict[str, Any] = {}
        self._ready: collections.deque[tuple[dict[str, Any], int]] = collections.deque()

    def add_image(self, tag: str, image: Image, step: int) -> None:
        self.add_encoded_images({tag: EncodedImage(image)}, step)

    def add_encoded_images(self, images: Mapping[str, EncodedImage], step: int) -> None:
        import wandb

        path = os.path.join(self._staging, "image.png")
        for tag, image in images.items():
            with open(path, "wb") as file:
                file.write(image.png)
            self._add(tag, self._bound(wandb.Image(path), tag, step), step)
        if os.path.exists(path):
            os.remove(path)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._add(tag, float(value), step)

    def add_scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            self._add(tag, float(value), step)

    def add_table(self, tag: str, table: Table, step: int) -> None:
        import wandb

        columns: list[Any] = list(table.columns)
        data = [list(row) for row in table.rows]
        self._add(tag, self._bound(wandb.Table(columns=columns, data=data), tag, step), step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        import wandb

        self._add(tag, self._bound(wandb.Html(f"<pre>{html.escape(text)}</pre>"), tag, step), step)

    def flush(self) -> None:
        """Close this snapshot's payload; :meth:`on_training_thread` logs it."""
        if self._payload and self._step is not None:
            self._ready.append((self._payload, self._step))
        self._payload, self._step = {}, None

    def on_training_thread(self) -> None:
        while self._ready:
            payload, step = self._ready.popleft()
            self.logger.log_metrics(payload, step)

    def _add(self, tag: str, value: Any, step: int) -> None:
        if self._step is not None and step != self._step:
            self.flush()  # a new step: the previous one's payload is complete
        self._step = step
        self._payload[tag] = value

    def _bound(self, media: Any, tag: str, step: int) -> Any:
        # Binding copies the file into the run's media folder: done here, so that `log`
        # on the training thread finds it done.
        media.bind_to_run(self.run, tag, step)
        return media

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "_staging", ""), ignore_errors=True)


class MLflowSink:
    """MLflow, through an ``MLFlowLogger``: images through the client's ``log_image`` with
    ``key`` and ``step`` (MLflow's image view then has a step slider per tag), scalars through
    the logger's ``log_metrics``, tables and text as Markdown artifacts
    ``<tag>/step_<step>.md``.

    MLflow's ``log_image`` takes pixels and writes its own PNG and thumbnail; the calls are
    made on the writer thread (the MLflow client keeps no per-thread state).

    Args:
        logger: an ``MLFlowLogger``.
    """

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self.client = logger.experiment  # creates the MLflow run here, on the training thread
        self.run_id = logger.run_id

    def add_image(self, tag: str, image: Image, step: int) -> None:
        self.add_encoded_images({tag: EncodedImage(image)}, step)

    def add_encoded_images(self, images: Mapping[str, EncodedImage], step: int) -> None:
        for tag, image in images.items():
            self.client.log_image(self.run_id, image.rgb, key=tag, step=step)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.add_scalars({tag: value}, step)

    def add_scalars(self, values: Mapping[str, float], step: int) -> None:
        self.logger.log_metrics(dict(values), step)

    def add_table(self, tag: str, table: Table, step: int) -> None:
        self.add_text(tag, table.markdown(), step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.client.log_text(self.run_id, text, f"{tag}/step_{step:08d}.md")

    def flush(self) -> None:
        """Every call above has written its record when it returns."""
