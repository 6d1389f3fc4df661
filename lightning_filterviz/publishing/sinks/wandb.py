"""Weights & Biases, through a ``WandbLogger`` (``wandb`` is imported only when one is attached)."""

from __future__ import annotations

import collections
import html
import os
import shutil
import tempfile
from typing import Any, Mapping, Optional

from lightning_filterviz.core.png import EncodedImage
from lightning_filterviz.core.records import Table
from lightning_filterviz.publishing.sinks.base import Sink
from lightning_filterviz.publishing.sinks.registry import sink_for_logger

__all__ = ["WandbSink"]


@sink_for_logger("WandbLogger")
class WandbSink(Sink):
    """Weights & Biases, through a ``WandbLogger``: each snapshot in one ``log`` call at the
    trainer's step, its images as ``wandb.Image`` (one media panel per tag, with a step
    slider), its scalars beside them and its tables as ``wandb.Table``.

    The images are the PNG files already encoded for the other sinks (W&B copies them into
    the run; it does not encode again). Everything costly happens on the writer thread,
    down to copying each file into the run's media folder; the one ``log`` call is made on
    the training thread, from :meth:`on_training_thread`, because ``wandb`` does not
    support logging to one run from two threads at once.

    Args:
        logger: a ``WandbLogger``; its run is started here, if it has not been yet.

    Example::

        logger = WandbLogger(project="my-project")
        trainer = Trainer(logger=logger, callbacks=[FilterMonitor()])  # the monitor makes WandbSink(logger)
    """

    takes_images = True

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self.run = logger.experiment  # starts the W&B run here, on the training thread, as the trainer would
        self._staging = tempfile.mkdtemp(prefix="filterviz-wandb-")
        self._step: Optional[int] = None
        self._payload: dict[str, Any] = {}
        self._ready: collections.deque[tuple[dict[str, Any], int]] = collections.deque()

    @classmethod
    def from_logger(cls, logger: Any) -> WandbSink:
        return cls(logger)

    def add_images(self, images: Mapping[str, EncodedImage], step: int) -> None:
        import wandb

        path = os.path.join(self._staging, "image.png")
        for tag, image in images.items():
            with open(path, "wb") as file:
                file.write(image.png)
            self._add(tag, self._bound(wandb.Image(path), tag, step), step)
        if os.path.exists(path):
            os.remove(path)

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
