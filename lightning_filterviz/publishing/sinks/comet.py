"""Comet, through a ``CometLogger`` (``comet_ml`` is imported only when one is attached)."""

from __future__ import annotations

import collections
import functools
import itertools
import os
import shutil
import tempfile
from typing import Any, Callable, Mapping

from lightning_filterviz.core.png import EncodedImage
from lightning_filterviz.publishing.sinks.base import Sink
from lightning_filterviz.publishing.sinks.registry import sink_for_logger

__all__ = ["CometSink"]


@sink_for_logger("CometLogger")
class CometSink(Sink):
    """Comet, through a ``CometLogger``: images through the experiment's ``log_image`` under
    their tags with the step (Comet's image panel then has a step slider per name), scalars
    through the logger's ``log_metrics`` beside the run's own metrics, and tables and text
    through ``log_text`` with the step, the tag in the text's metadata.

    A Comet experiment keeps one current step, which every call given a step sets before it
    files its record, and the trainer logs the run's metrics from the training thread; a call
    from the writer thread could file an image under the trainer's step instead of its own.
    So every call to Comet is made on the training thread, from :meth:`on_training_thread`;
    the writer thread only writes each image's PNG file, which ``log_image`` copies and this
    sink then deletes.

    Args:
        logger: a ``CometLogger``; its experiment is started here, if it has not been yet.
            Offline, the experiment's archive is written when the experiment ends.

    Example::

        os.environ["COMET_START_ONLINE"] = "0"  # offline (CometLogger(online=False) disables it in Lightning 2.6)
        logger = CometLogger(offline_directory="comet-archives", project="my-project")
        trainer = Trainer(logger=logger, callbacks=[FilterMonitor()])  # the monitor makes CometSink(logger)
        trainer.fit(model, datamodule)
        logger.experiment.end()  # writes comet-archives/<experiment>.zip
    """

    takes_images = True

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self.experiment = logger.experiment  # starts the Comet experiment here, on the training thread
        self._staging = tempfile.mkdtemp(prefix="filterviz-comet-")
        self._file_numbers = itertools.count()
        self._calls: collections.deque[Callable[[], Any]] = collections.deque()

    @classmethod
    def from_logger(cls, logger: Any) -> CometSink:
        return cls(logger)

    def add_images(self, images: Mapping[str, EncodedImage], step: int) -> None:
        for tag, image in images.items():
            path = os.path.join(self._staging, f"{next(self._file_numbers)}.png")
            with open(path, "wb") as file:
                file.write(image.png)
            self._calls.append(functools.partial(self._log_image, path, tag, step))

    def add_scalars(self, values: Mapping[str, float], step: int) -> None:
        if values:
            metrics = {tag: float(value) for tag, value in values.items()}
            self._calls.append(functools.partial(self.logger.log_metrics, metrics, step))

    def add_text(self, tag: str, text: str, step: int) -> None:
        self._calls.append(functools.partial(self.experiment.log_text, text, step=step, metadata={"tag": tag}))

    def on_training_thread(self) -> None:
        while self._calls:
            self._calls.popleft()()

    def _log_image(self, path: str, tag: str, step: int) -> None:
        # From a path, Comet takes the file's extension (png) and keeps the tag as the image's
        # name; given the bytes, it would take the extension from the tag ("net.0": "0").
        try:
            self.experiment.log_image(path, name=tag, step=step)
        finally:
            os.remove(path)

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "_staging", ""), ignore_errors=True)
