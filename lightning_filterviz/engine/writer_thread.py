"""The writer thread: rendering and writing jobs run here, in order, off the training thread;
and the gate where readers of the results wait for the snapshots still being judged there."""

from __future__ import annotations

import atexit
import queue
import threading
import weakref
from typing import Any, Callable, Optional

__all__ = ["BackgroundWriter", "StatisticsGate"]


class BackgroundWriter:
    """Runs rendering and writing jobs, in order, on one daemon thread.

    The queue is bounded: :meth:`submit` blocks while ``max_pending`` jobs wait, so a
    slow disk slows the caller down instead of letting memory grow, and nothing is
    dropped. The first exception a job raises is kept in :attr:`failure`; later jobs still
    run (they may check :attr:`failure` to skip what failed), and the caller decides how to
    report it.

    Args:
        max_pending: jobs that may wait at once.
    """

    def __init__(self, max_pending: int = 2) -> None:
        self.max_pending = max_pending
        self._jobs: queue.Queue[Optional[Callable[[], None]]] = queue.Queue(maxsize=max_pending)
        self._thread: Optional[threading.Thread] = None
        self._finishes_at_exit = False
        self.failure: Optional[BaseException] = None

    def __getstate__(self) -> dict[str, Any]:
        # Launchers that spawn processes pickle the callback: send the setting, not the thread.
        return {"max_pending": self.max_pending}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_pending"])  # type: ignore[misc]

    def on_writer_thread(self) -> bool:
        """Whether the caller is this writer's own thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, job: Callable[[], None]) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="filterviz-writer", daemon=True)
            self._thread.start()
            if not self._finishes_at_exit:
                # A script that never calls close() still gets every snapshot it submitted written.
                atexit.register(_finish_at_exit, weakref.ref(self))
                self._finishes_at_exit = True
        self._jobs.put(job)

    def drain(self) -> None:
        """Wait until every submitted job has run."""
        if self._thread is not None:
            self._jobs.join()

    def close(self) -> None:
        """Run what is queued, then stop the thread."""
        if self._thread is not None and self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        self._thread = None

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                job()
            except Exception as error:  # reported by the owner on the training thread
                if self.failure is None:
                    self.failure = error
            finally:
                job = None  # let the snapshot go while waiting for the next one
                self._jobs.task_done()


class StatisticsGate:
    """Counts the jobs handed to the writer whose results others read (a snapshot's statistics,
    a validation run's dataset examples) and those it has judged, so that readers of the
    results can wait for exactly those (not for their images)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._submitted = 0
        self._judged = 0

    def submitted(self) -> None:
        with self._condition:
            self._submitted += 1

    def done(self) -> None:
        with self._condition:
            self._judged += 1
            self._condition.notify_all()

    def wait(self, writer: Optional[BackgroundWriter]) -> None:
        if writer is None or writer.on_writer_thread():
            return
        with self._condition:
            self._condition.wait_for(lambda: self._judged >= self._submitted)


def _finish_at_exit(writer_ref: "weakref.ReferenceType[BackgroundWriter]") -> None:
    writer = writer_ref()
    if writer is not None:
        writer.close()
