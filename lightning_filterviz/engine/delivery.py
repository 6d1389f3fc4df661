"""The writer side of the engine: what the training thread shipped becomes results and outputs.

:class:`Delivery` receives a snapshot (or a validation run's dataset examples) on its way
to host memory, and on the writer thread (or at once, without ``background``) waits for
the copy, has the run state judge it (state/), the views render it (views/) and the
publisher write what they rendered (publishing/). Each stage hands the next a frozen
record. It owns the run state, the writer thread, the publisher, and the gate where readers
of the results (dead filters, dataset examples) wait for what is still being judged; every
change to the run state goes through the writer's queue, in order with the snapshots.
"""

from __future__ import annotations

import contextlib
import os
import sys
from concurrent.futures import Future
from typing import Any, Callable, ContextManager, Mapping, Optional, Union

from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn

from lightning_filterviz.capture.dataset_examples import InFlightExamples
from lightning_filterviz.capture.probe_capture import InFlightSnapshot
from lightning_filterviz.core.pickling import RebuiltWhenUnpickled
from lightning_filterviz.core.records import DatasetExamples, FeatureVisualizations, Snapshot
from lightning_filterviz.core.settings import VisualizerSettings
from lightning_filterviz.engine.writer_thread import BackgroundWriter, StatisticsGate
from lightning_filterviz.publishing.publisher import Publisher
from lightning_filterviz.publishing.sinks.base import Sink
from lightning_filterviz.state.run_state import RunState
from lightning_filterviz.views.registry import (
    ViewContext,
    render_ending,
    render_examples,
    render_feature_vis,
    render_snapshot,
)

__all__ = ["Delivery", "PendingSnapshot"]


class PendingSnapshot:
    """A snapshot being judged on the writer thread (``background=True``).

    Attributes:
        step: the training step it was taken at.
    """

    def __init__(self, step: int) -> None:
        self.step = step
        self._future: Future[Snapshot] = Future()

    def result(self, timeout: Optional[float] = None) -> Snapshot:
        """Wait until the snapshot is judged and return it, frozen (its images may still be
        being drawn).

        Args:
            timeout: seconds to wait at most; ``None``: as long as it takes.

        Raises:
            TimeoutError: if it is not judged within ``timeout``.
            Exception: what judging it raised.
        """
        return self._future.result(timeout)

    def done(self) -> bool:
        """Whether :meth:`result` returns at once."""
        return self._future.done()


class Delivery(RebuiltWhenUnpickled):
    """Judges, renders and publishes shipped snapshots, in order, off the training thread.

    Args:
        settings: the engine's settings (``max_pending``: snapshots that may wait for the writer thread).
        sink: where images, scalars and tables go.
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

    def attach(self, sink: Sink, history_dir: Optional[Union[str, os.PathLike]], *, new_run: bool) -> None:
        """Publish to ``sink`` from now on, after what is queued for the previous one. With
        ``new_run``, the next snapshot describes the layers again, for the new destination."""
        if self._writer is not None:
            self._writer.drain()
        self.publisher = Publisher(sink, history_dir)
        if new_run:
            self._run(self._forget_description)

    def reset(self) -> None:
        """Write what is queued, then start a new run state."""
        self.flush()
        self.state = RunState(self.settings)

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore the run state from a checkpoint, in order with what is queued; returns once done."""
        self._submit(lambda: self._judging(lambda: self.state.load_state_dict(state)))
        self.wait_for_results()

    def submit_snapshot(self, in_flight: InFlightSnapshot, publish: bool) -> Union[Snapshot, PendingSnapshot]:
        """Judge the snapshot once its copy has arrived, then (with ``publish``) render and write it.

        Returns:
            The judged snapshot when there is no writer thread; else a handle to it.
        """
        pending = PendingSnapshot(in_flight.step)
        self._submit(lambda: self._judge_and_publish(in_flight, publish, pending))
        return pending.result() if self._writer is None else pending

    def submit_examples(self, in_flight: InFlightExamples, step: int, rgb: Mapping[str, bool]) -> None:
        """Keep a validation run's dataset examples once their copy has arrived, then render and write them."""
        self._submit(lambda: self._keep_and_publish_examples(in_flight, step, rgb))

    def submit_feature_vis(self, visuals: FeatureVisualizations) -> None:
        """Keep a set of feature visualizations (already on the host), then render and write them."""
        self._submit(lambda: self._keep_and_publish_feature_vis(visuals))

    def submit_ending(self, step: int, final: Optional[InFlightSnapshot] = None) -> None:
        """Render what the end of the run at ``step`` shows: the filmstrips, the latest drift
        strips not drawn yet, and the views of the ``final`` look at the trained model, once
        its copy has arrived (see :meth:`RunState.look`)."""
        self._run(lambda: self._publish_ending(step, final))

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
        messages = self.state.take_messages() + [("warn", text) for text in self.publisher.take_messages()]
        if not messages:
            return
        with _clear_of_progress_bars():
            for kind, text in messages:
                (rank_zero_warn if kind == "warn" else rank_zero_info)(text)

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

    def _judging(self, judge: Callable[[], Any]) -> Any:
        # Readers of the results are let go whether judging succeeds or raises.
        try:
            return judge()
        finally:
            self._results.done()

    def _judge_and_publish(self, in_flight: InFlightSnapshot, publish: bool, pending: PendingSnapshot) -> None:
        try:
            snapshot = self._judging(lambda: self.state.judge(in_flight.wait()))
        except BaseException as error:
            pending._future.set_exception(error)
            raise
        pending._future.set_result(snapshot)
        if publish and self._may_write():
            self.publisher.publish(render_snapshot(snapshot, self._view_context()))

    def _keep_and_publish_examples(self, in_flight: InFlightExamples, step: int, rgb: Mapping[str, bool]) -> None:
        # A failure here costs the dataset examples only, not the snapshots' images and scalars.
        try:
            examples = self._judging(lambda: self._keep_examples(in_flight, step, rgb))
            if self._may_write():
                self.publisher.publish(render_examples(examples, self._view_context()))
        except Exception as error:
            self.state.warn(f"filterviz: the dataset examples at step {step} failed: {type(error).__name__}: {error}")

    def _keep_examples(self, in_flight: InFlightExamples, step: int, rgb: Mapping[str, bool]) -> DatasetExamples:
        layers, weights = in_flight.wait()
        examples = DatasetExamples(step=step, layers=layers, weights=weights, rgb=rgb)
        self.state.keep_examples(examples)
        return examples

    def _keep_and_publish_feature_vis(self, visuals: FeatureVisualizations) -> None:
        # A failure here costs the feature visualizations only.
        try:
            self._judging(lambda: self.state.keep_feature_vis(visuals))
            if self._may_write():
                self.publisher.publish(render_feature_vis(visuals, self._view_context()))
        except Exception as error:
            self.state.warn(
                f"filterviz: the feature visualizations at step {visuals.step} failed: {type(error).__name__}: {error}"
            )

    def _publish_ending(self, step: int, final: Optional[InFlightSnapshot]) -> None:
        ending = self.state.ending(step, self.state.look(final.wait()) if final is not None else None)
        if self._may_write():
            self.publisher.publish(render_ending(ending, self._view_context()))

    def _forget_description(self) -> None:
        self.state.described = False

    def _view_context(self) -> ViewContext:
        return ViewContext(self.settings, keeps_history=self.publisher.keeps_history)

    def _may_write(self) -> bool:
        return self._publishing and (self._writer is None or self._writer.failure is None)


def _clear_of_progress_bars() -> ContextManager[Any]:
    """Where a tqdm progress bar is on screen (Lightning's, or a plain loop's), lift it while
    messages are written and draw it again below them, so each message stands on its own
    lines instead of being written into the middle of the bar."""
    tqdm = sys.modules.get("tqdm")  # no bar can be on screen unless tqdm was imported
    if tqdm is None:
        return contextlib.nullcontext()
    return tqdm.tqdm.external_write_mode(file=sys.stderr)

