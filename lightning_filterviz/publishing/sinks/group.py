"""One snapshot, several sinks: each image encoded once, and a failing sink does not stop the others."""

from __future__ import annotations

import collections
from typing import Any, Callable, Mapping

from lightning_filterviz.core.png import EncodedImage
from lightning_filterviz.core.records import Table
from lightning_filterviz.publishing.sinks.base import Sink, as_sink

__all__ = ["SinkGroup"]


class SinkGroup(Sink):
    """Hands everything it gets to each of its sinks.

    Images arrive as :class:`~lightning_filterviz.core.png.EncodedImage`, and each sink gets
    the same one, so their PNG bytes are encoded at most once, whatever the number of sinks
    that want them. A sink that raises is left out for the rest of the run (see
    :meth:`take_failures`); the other sinks go on getting every snapshot.

    Args:
        sinks: a name for each sink (it appears in messages, e.g. ``"WandbLogger"``) -> the
            sink, or anything :func:`~lightning_filterviz.publishing.sinks.base.as_sink`
            makes one of (a ``SummaryWriter``, a directory path, an object of the user's own).

    Raises:
        TypeError: for a sink that ``as_sink`` cannot make one of.

    Example::

        group = SinkGroup({"TensorBoard": TensorBoardSink(writer), "PNG files": DirectorySink("out")})
        visualizer = FilterVisualizer(group)
    """

    def __init__(self, sinks: Mapping[str, Any]) -> None:
        self._sinks = {name: as_sink(sink) for name, sink in sinks.items()}
        self._failures: collections.deque[tuple[str, Exception]] = collections.deque()
        self.takes_images = any(sink.takes_images for sink in self._sinks.values())

    @property
    def sinks(self) -> dict[str, Sink]:
        """The sinks still written to, by name."""
        return dict(self._sinks)

    def add_images(self, images: Mapping[str, EncodedImage], step: int) -> None:
        self._each(lambda sink: sink.add_images(images, step))

    def add_scalars(self, values: Mapping[str, float], step: int) -> None:
        self._each(lambda sink: sink.add_scalars(values, step))

    def add_table(self, tag: str, table: Table, step: int) -> None:
        self._each(lambda sink: sink.add_table(tag, table, step))

    def add_text(self, tag: str, text: str, step: int) -> None:
        self._each(lambda sink: sink.add_text(tag, text, step))

    def flush(self) -> None:
        self._each(lambda sink: sink.flush())

    def on_training_thread(self) -> None:
        """Let the sinks that must call their logger from the training thread do so now."""
        self._each(lambda sink: sink.on_training_thread())

    def take_failures(self) -> list[tuple[str, Exception]]:
        """The sinks left out since the last call, by name, with what they raised, and what
        the sinks still here report of their own parts (safe to call from any thread)."""
        taken = []
        while self._failures:
            taken.append(self._failures.popleft())
        for sink in list(self._sinks.values()):
            taken.extend(sink.take_failures())
        return taken

    def take_notices(self) -> list[str]:
        """What the sinks still here have to tell since the last call (see :meth:`Sink.take_notices`)."""
        return [notice for sink in list(self._sinks.values()) for notice in sink.take_notices()]

    def _each(self, call: Callable[[Sink], None]) -> None:
        # A copy: the writer thread and the training thread may both be here, and either may
        # leave a failed sink out.
        for name, sink in list(self._sinks.items()):
            try:
                call(sink)
            except Exception as error:  # one logger's trouble must not cost the others their records
                if self._sinks.pop(name, None) is not None:
                    self._failures.append((name, error))
