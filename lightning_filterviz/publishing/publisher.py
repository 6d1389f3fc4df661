"""Publishing: a judged snapshot becomes images, scalars, text and a history file.

The :class:`Publisher` owns where things go (one sink, one history directory) and runs
on the writer thread when the engine writes in the background.
"""

from __future__ import annotations

import collections
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Union

from lightning_filterviz.drawing.example_images import example_tiles, examples_grid
from lightning_filterviz.core.history import HistoryWriter, write_examples_history
from lightning_filterviz.core.pickling import RebuiltWhenUnpickled
from lightning_filterviz.core.png import EncodedImage
from lightning_filterviz.core.records import Snapshot
from lightning_filterviz.core.settings import VisualizerSettings
from lightning_filterviz.publishing.sinks.base import Sink, write_images, write_scalars, write_table
from lightning_filterviz.core.tags import DEAD_FILTERS_TAG, EXAMPLES, LAYERS_TAG, layer_tag
from lightning_filterviz.core.tiles import Image
from lightning_filterviz.views.snapshot_views import (
    dead_filter_table,
    drawn_filters,
    drift_strip_images,
    filmstrip_images,
    snapshot_images,
    snapshot_scalars,
)

if TYPE_CHECKING:
    from lightning_filterviz.core.records import LayerExamples

__all__ = ["Publisher"]


class Publisher(RebuiltWhenUnpickled):
    """Writes snapshots to one sink and, optionally, to a history directory.

    Args:
        sink: where images, scalars and text go.
        history_dir: where each snapshot's arrays are saved as NPZ; ``None``: nowhere.
    """

    rebuilt_when_unpickled = {"_writing": threading.Lock}

    def __init__(self, sink: Sink, history_dir: Optional[Union[str, os.PathLike]] = None) -> None:
        self.sink = sink
        self.history_dir = Path(history_dir) if history_dir is not None else None
        self._failures: collections.deque[tuple[str, Exception]] = collections.deque()
        # Held while a snapshot is written, so that what fails in one snapshot is told in one message.
        self._writing = threading.Lock()

    def publish(self, snapshot: Snapshot, settings: VisualizerSettings) -> None:
        """Draw every view of ``snapshot``, write it, and save its history file."""
        with self._writing:
            self._publish(snapshot, settings)

    def _publish(self, snapshot: Snapshot, settings: VisualizerSettings) -> None:
        step = snapshot.step
        dead = snapshot.dead_filters
        needed = settings.log_weights or self.history_dir is not None
        drawn = drawn_filters(snapshot) if needed else {}
        write_images(self.sink, _encoded(snapshot_images(snapshot, settings, drawn)), step)
        write_scalars(self.sink, snapshot_scalars(snapshot), step)
        if snapshot.layer_table is not None:
            write_table(self.sink, LAYERS_TAG, snapshot.layer_table, step)
        if dead:
            out_channels = {name: layer.out_channels for name, layer in snapshot.layers.items()}
            write_table(self.sink, DEAD_FILTERS_TAG, dead_filter_table(dead, out_channels), step)
        if self.history_dir is not None:
            self._save_history(snapshot, drawn)
        self.sink.flush()

    def publish_ending(self, ending: Snapshot, latest_drift: Optional[Snapshot], colormap: str) -> None:
        """At the end of a run: the filmstrips as they stand, and the latest snapshot's drift
        strips when it did not draw them."""
        with self._writing:
            self._publish_ending(ending, latest_drift, colormap)

    def _publish_ending(self, ending: Snapshot, latest_drift: Optional[Snapshot], colormap: str) -> None:
        write_images(self.sink, _encoded(filmstrip_images(ending)), ending.step)
        self.sink.flush()
        if latest_drift is not None:
            write_images(self.sink, _encoded(drift_strip_images(latest_drift, colormap)), latest_drift.step)
            self.sink.flush()

    def publish_examples(
        self, step: int, examples: Mapping[str, LayerExamples], weights: Mapping[str, Any], rgb: Mapping[str, bool]
    ) -> None:
        """Draw each layer's dataset examples (``filterviz/examples/<layer>``), write them, and
        save their history file."""
        with self._writing:
            images, tiles = {}, {}
            for name, found in examples.items():
                tiles[name] = example_tiles(found.patches.numpy(), found.values.isfinite().numpy())
                images[layer_tag(EXAMPLES, name)] = examples_grid(weights[name].numpy(), rgb[name], tiles[name])
            write_images(self.sink, _encoded(images), step)
            self.sink.flush()
            if self.history_dir is not None:
                self._save(lambda directory: write_examples_history(directory, step, examples, tiles))

    def flush(self) -> None:
        self.sink.flush()

    def on_training_thread(self) -> None:
        """Let a sink that must call its logger from the training thread do so now."""
        deliver = getattr(self.sink, "on_training_thread", None)
        if deliver is not None:
            deliver()

    def take_messages(self) -> list[str]:
        """One message naming what has failed since the last call (sinks of a
        :class:`~lightning_filterviz.publishing.sinks.group.SinkGroup`, the history files) and why.
        Nothing while a snapshot is being written: its failures are told together, later."""
        if not self._writing.acquire(blocking=False):
            return []
        try:
            return self._take_messages()
        finally:
            self._writing.release()

    def _take_messages(self) -> list[str]:
        take_sink_failures = getattr(self.sink, "take_failures", None)
        failures = list(take_sink_failures()) if take_sink_failures is not None else []
        while self._failures:
            failures.append(self._failures.popleft())
        return [_failure_message(failures)] if failures else []

    def _save_history(self, snapshot: Snapshot, drawn: Mapping[str, Any]) -> None:
        self._save(lambda directory: HistoryWriter(directory).write(snapshot, drawn))

    def _save(self, write: Callable[[Path], Any]) -> None:
        assert self.history_dir is not None
        try:
            write(self.history_dir)
        except Exception as error:  # the images and scalars still go to the loggers
            self._failures.append((f"the history files in {self.history_dir}", error))
            self.history_dir = None


def _failure_message(failures: list[tuple[str, Exception]]) -> str:
    # One warning for one cause, such as a full disk under both the PNG files and the history.
    names = " and ".join(name for name, _ in failures)
    causes = "; ".join(dict.fromkeys(f"{type(error).__name__}: {error}" for _, error in failures))
    verb = "it gets" if len(failures) == 1 else "they get"
    return (
        f"filterviz: writing to {names} failed, so {verb} no more snapshots in this run; "
        f"the other loggers still get every one, and `dead_filters` is kept up to date. Cause: {causes}"
    )


def _encoded(images: Mapping[str, Image]) -> dict[str, EncodedImage]:
    # One EncodedImage per picture: every sink that wants PNG bytes shares one encoding.
    return {tag: EncodedImage(image) for tag, image in images.items()}
