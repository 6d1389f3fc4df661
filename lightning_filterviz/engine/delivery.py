"""The writer side of the engine: what the training thread shipped becomes results and images.

:class:`Delivery` receives a snapshot (or a validation run's dataset examples) on its way
to host memory, and on the writer thread (or at once, without ``background``) waits for
the copy, judges it into the run state (run_state.py) and publishes it (publishing.py).
It owns the run state, the writer thread, the publisher, and the gate where readers of
the results (dead filters, dataset examples) wait for what is still being judged.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping, Optional, Union

import numpy as np
import torch
from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn

from lightning_filterviz.capture.probe_capture import InFlightSnapshot
from lightning_filterviz.capture.dataset_examples import InFlightExamples
from lightning_filterviz.core.pickling import RebuiltWhenUnpickled
from lightning_filterviz.publishing.publisher import Publisher
from lightning_filterviz.core.records import Snapshot
from lightning_filterviz.state.run_state import RunState
from lightning_filterviz.core.settings import VisualizerSettings
from lightning_filterviz.publishing.sinks.base import Sink
from lightning_filterviz.engine.writer_thread import BackgroundWriter, StatisticsGate

__all__ = ["Delivery"]


class Delivery(RebuiltWhenUnpickled):
    """Judges and publishes shipped snapshots, in order, off the training thread.

    Args:
        settings: the engine's settings (``max_pending``: snapshots that may wait for the writer thread).
        sink: where images, scalars and text go.
        history_dir: where each snapshot's arrays are saved; ``None``: nowhere.
        background: run the work on a writer thread; ``False``: at once, on the caller's thread.
    """

    rebuilt_when_unpickled = {"_results": StatisticsGate}

    def __init__(
        self,
        settings: VisualizerSettings,
        sink: Sink,
        history_dir: Optional[Union[str, os.PathLike]],
        *,
        background: bool,
    ) -> None:
        self.settings = settings
        self.state = RunState(settings)
        self.publisher = Publisher(sink, history_dir)
        self._writer = BackgroundWriter(max_pending=settings.max_pending) if background else None
        self._results = StatisticsGate()
        self._publishing = True

    def attach(self, sink: Sink, history_dir: Optional[Union[str, os.PathLike]]) -> None:
        """Publish to ``sink`` from now on, after what is queued for the previous one."""
        if self._writer is not None:
            self._writer.drain()
        self.publisher = Publisher(sink, history_dir)

    def reset(self) -> None:
        """Write what is queued, then start a new run state."""
        self.flush()
        self.state = RunState(self.settings)

    def submit_snapshot(self, in_flight: InFlightSnapshot, publish: bool) -> None:
        """Judge the snapshot once its copy has arrived, then (with ``publish``) draw and write it."""
        self._submit(lambda: self._judge_and_publish(in_flight, publish))

    def submit_examples(self, in_flight: InFlightExamples, step: int, rgb: Mapping[str, bool]) -> None:
        """Keep a validation run's dataset examples once their copy has arrived, then draw and write them."""
        self._submit(lambda: self._keep_and_publish_examples(in_flight, step, rgb))

    def submit_ending(self, step: int) -> None:
        """Draw the filmstrips as they stand at ``step``, and the latest drift strips not drawn yet."""
        self._run(lambda: self._publish_ending(step))

    def wait_for_results(self) -> None:
        """Wait until every submitted snapshot and set of examples is judged (not drawn)."""
        self._results.wait(self._writer)

    def flush(self) -> None:
        """Wait until everything submitted is written, then flush the sink."""
        if self._writer is not None:
            self._writer.drain()
            self.report_failure()
        if self._publishing:
            self.publisher.flush()
        self.poll()

    def poll(self) -> None:
        """On the training thread: let sinks that must call their logger there deliver, and
        show the messages queued for the user."""
        if self._publishing:
            self.publisher.on_training_thread()
        for kind, text in self.state.take_messages():
            (rank_zero_warn if kind == "warn" else rank_zero_info)(text)
        for text in self.publisher.take_messages():
            rank_zero_warn(text)

    def close(self) -> None:
        """Flush, then stop the writer thread (the next submission starts it again)."""
        self.flush()
        if self._writer is not None:
            self._writer.close()

    def report_failure(self) -> None:
        """Say once that the writer thread failed; nothing more is written in this run."""
        failure = self._writer.failure if self._writer is not None else None
        if failure is None or not self._publishing:
            return
        self._publishing = False
        rank_zero_warn(
            "filterviz: writing snapshot images failed, so no more images or scalars are written in this run; "
            f"`dead_filters` is still kept up to date. Cause: {type(failure).__name__}: {failure}"
        )

    def _submit(self, job: Callable[[], None]) -> None:
        # Readers of the results wait for the judging part of this job (see StatisticsGate).
        self._results.submitted()
        self._run(job)

    def _run(self, job: Callable[[], None]) -> None:
        if self._writer is None:
            job()
            self.poll()
        else:
            self._writer.submit(job)

    # Below: on the writer thread (with background=True).

    def _judge_and_publish(self, in_flight: InFlightSnapshot, publish: bool) -> None:
        try:
            snapshot = _with_contiguous_weights(in_flight.wait())
            self.state.update(snapshot)
        finally:
            self._results.done()
        if publish and self._may_write():
            self.publisher.publish(snapshot, self.settings)

    def _keep_and_publish_examples(self, in_flight: InFlightExamples, step: int, rgb: Mapping[str, bool]) -> None:
        # A failure here costs the dataset examples only, not the snapshots' images and scalars.
        try:
            try:
                examples, weights = in_flight.wait()
                self.state.keep_examples(examples)
            finally:
                self._results.done()
            if self._may_write():
                self.publisher.publish_examples(step, examples, weights, rgb)
        except Exception as error:
            self.state.warn(f"filterviz: the dataset examples at step {step} failed: {type(error).__name__}: {error}")

    def _publish_ending(self, step: int) -> None:
        ending = Snapshot(step=step, filmstrips=self.state.filmstrip_rows())
        latest_drift, self.state.undrawn_drift = self.state.undrawn_drift, None
        if self.settings.log_weights and (ending.filmstrips or latest_drift is not None) and self._may_write():
            self.publisher.publish_ending(ending, latest_drift, self.settings.colormap)

    def _may_write(self) -> bool:
        return self._publishing and (self._writer is None or self._writer.failure is None)


def _with_contiguous_weights(snapshot: Snapshot) -> Snapshot:
    """Lay each layer's weights out in NCHW order once: they arrive in the model's memory order
    (channels_last, say), and drift, the drawn slices and the history all read them as NCHW."""
    for layer in snapshot.layers.values():
        if not layer.weight.is_contiguous():
            layer.weight = torch.from_numpy(np.ascontiguousarray(layer.weight.numpy()))  # NumPy: no torch thread pool
    return snapshot
