"""Publishing: what the views rendered goes to a sink and to the history directory.

The :class:`Publisher` owns where things go (one sink, one history directory) and runs on
the writer thread when the engine writes in the background. It draws nothing: it encodes
each image once (every sink that wants PNG bytes shares that encoding), hands the images,
scalars and tables to the sink, and saves the history files.
"""

from __future__ import annotations

import collections
import os
import threading
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

from lightning_filterviz.core.history import write_history_file
from lightning_filterviz.core.pickling import RebuiltWhenUnpickled
from lightning_filterviz.core.png import EncodedImage
from lightning_filterviz.core.records import HistoryFile, Rendered
from lightning_filterviz.core.tiles import Image
from lightning_filterviz.publishing.sinks.base import Sink

__all__ = ["Publisher"]


class Publisher(RebuiltWhenUnpickled):
    """Writes rendered outputs to one sink and, optionally, to a history directory.

    Args:
        sink: where images, scalars and tables go.
        history_dir: where history files are saved; ``None``: nowhere.
    """

    rebuilt_when_unpickled = {"_writing": threading.Lock}

    def __init__(self, sink: Sink, history_dir: Optional[Union[str, os.PathLike]] = None) -> None:
        self.sink = sink
        self.history_dir = Path(history_dir) if history_dir is not None else None
        self._failures: collections.deque[tuple[str, Exception]] = collections.deque()
        # What went on writing but should be told, such as a file saved beside one of the same name.
        self._notices: collections.deque[str] = collections.deque()
        self._history_copied = False
        # Where this run saved each history file, for a file that completes one (see HistoryFile).
        self._saved_at: dict[str, Path] = {}
        self._told_of_copies = False
        # Held while a snapshot is written, so that what fails in one snapshot is told in one message.
        self._writing = threading.Lock()

    @property
    def keeps_history(self) -> bool:
        """Whether history files are saved (the views render them only then)."""
        return self.history_dir is not None

    def publish(self, outputs: Sequence[Rendered]) -> None:
        """Write each rendered output (a snapshot's, a validation run's, a run end's), in order."""
        with self._writing:
            for rendered in outputs:
                self._write(rendered)

    def flush(self) -> None:
        self.sink.flush()

    def on_training_thread(self) -> None:
        """Let a sink that must call its logger from the training thread do so now."""
        self.sink.on_training_thread()

    def take_messages(self) -> list[str]:
        """One message naming what has failed since the last call (sinks of a
        :class:`~lightning_filterviz.publishing.sinks.group.SinkGroup`, the history files) and
        why, and one with what the sink and the history have to tell (files kept beside
        files of the same name). Nothing while a snapshot is being written: what happens in
        one snapshot is told together, later."""
        if not self._writing.acquire(blocking=False):
            return []
        try:
            failures = list(self.sink.take_failures())
            while self._failures:
                failures.append(self._failures.popleft())
            notices = list(self.sink.take_notices())
            while self._notices:
                notices.append(self._notices.popleft())
            messages = [_failure_message(failures)] if failures else []
            if notices and not self._told_of_copies:  # once per run, whichever part kept a copy first
                self._told_of_copies = True
                messages.append(_notice_message(notices))
            return messages
        finally:
            self._writing.release()

    def _write(self, rendered: Rendered) -> None:
        step = rendered.step
        if rendered.images:
            self.sink.add_images(_encoded(rendered.images), step)
        if rendered.scalars:
            self.sink.add_scalars(dict(rendered.scalars), step)
        for tag, table in rendered.tables.items():
            self.sink.add_table(tag, table, step)
        for file in rendered.history:
            self._save(file)
        self.sink.flush()

    def _save(self, file: HistoryFile) -> None:
        if self.history_dir is None:  # a history write failed earlier in this run
            return
        try:
            own = self._saved_at.get(file.name) if file.completes else None
            written = write_history_file(self.history_dir, file, own=own)
        except Exception as error:  # the images and scalars still go to the loggers
            self._failures.append((f"the history files in {self.history_dir}", error))
            self.history_dir = None
            return
        self._saved_at[file.name] = written
        if written.name != file.name and not self._history_copied:  # noted for the first file, not each
            self._history_copied = True
            self._notices.append(f"the history files in {self.history_dir} ({file.name} saved as {written.name})")


def _failure_message(failures: list[tuple[str, Exception]]) -> str:
    # One warning for one cause, such as a full disk under both the PNG files and the history.
    names = " and ".join(name for name, _ in failures)
    causes = "; ".join(dict.fromkeys(f"{type(error).__name__}: {error}" for _, error in failures))
    verb = "it gets" if len(failures) == 1 else "they get"
    return (
        f"filterviz: writing to {names} failed, so {verb} no more snapshots in this run; "
        f"the other loggers still get every one, and `dead_filters` is kept up to date. Cause: {causes}"
    )


def _notice_message(places: list[str]) -> str:
    # One warning for files kept beside older ones, wherever they lie (history and PNG files alike).
    return (
        f"filterviz: files of the same names were there already in {' and '.join(places)}: from an earlier fit "
        "into the same log directory, another monitor of the same trainer, or an earlier snapshot at the same "
        "step. Nothing is overwritten: the new "
        "files get a suffix -2, -3, ..., and filterviz-report reads them by step, then in the order written. "
        "Give each fit a log directory of its own to keep them apart."
    )


def _encoded(images: Mapping[str, Image]) -> dict[str, EncodedImage]:
    # One EncodedImage per picture: every sink that wants PNG bytes shares one encoding.
    return {tag: EncodedImage(image) for tag, image in images.items()}
