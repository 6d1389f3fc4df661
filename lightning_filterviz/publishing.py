"""Publishing: a judged snapshot becomes images, scalars, text and a history file.

The :class:`Publisher` owns where things go (one sink, one history directory) and runs
on the writer thread when the engine writes in the background.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from lightning_filterviz.history import HistoryWriter
from lightning_filterviz.records import Snapshot
from lightning_filterviz.render import dead_filter_table
from lightning_filterviz.settings import VisualizerSettings
from lightning_filterviz.sinks import Sink, write_images, write_scalars
from lightning_filterviz.tags import DEAD_FILTERS_TAG, LAYERS_TAG
from lightning_filterviz.views import (
    drawn_filters,
    drift_strip_images,
    filmstrip_images,
    snapshot_images,
    snapshot_scalars,
)

__all__ = ["Publisher"]


class Publisher:
    """Writes snapshots to one sink and, optionally, to a history directory.

    Args:
        sink: where images, scalars and text go.
        history_dir: where each snapshot's arrays are saved as NPZ; ``None``: nowhere.
    """

    def __init__(self, sink: Sink, history_dir: Optional[Union[str, os.PathLike]] = None) -> None:
        self.sink = sink
        self.history_dir = Path(history_dir) if history_dir is not None else None

    def publish(self, snapshot: Snapshot, settings: VisualizerSettings) -> None:
        """Draw every view of ``snapshot``, write it, and save its history file."""
        step = snapshot.step
        dead = snapshot.dead_filters
        needed = settings.log_weights or self.history_dir is not None
        drawn = drawn_filters(snapshot) if needed else {}
        write_images(self.sink, snapshot_images(snapshot, settings, drawn), step)
        write_scalars(self.sink, snapshot_scalars(snapshot), step)
        if snapshot.layer_table is not None:
            self.sink.add_text(LAYERS_TAG, snapshot.layer_table, step)
        if dead:
            out_channels = {name: layer.out_channels for name, layer in snapshot.layers.items()}
            self.sink.add_text(DEAD_FILTERS_TAG, dead_filter_table(dead, out_channels), step)
        if self.history_dir is not None:
            HistoryWriter(self.history_dir).write(snapshot, drawn)
        self.sink.flush()

    def publish_ending(self, ending: Snapshot, latest_drift: Optional[Snapshot], colormap: str) -> None:
        """At the end of a run: the filmstrips as they stand, and the latest snapshot's drift
        strips when it did not draw them."""
        write_images(self.sink, filmstrip_images(ending), ending.step)
        if latest_drift is not None:
            write_images(self.sink, drift_strip_images(latest_drift, colormap), latest_drift.step)

    def flush(self) -> None:
        self.sink.flush()
