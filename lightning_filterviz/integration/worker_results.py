"""Rank 0's results, back in the process that made the monitor when a launcher ran the fit elsewhere.

``strategy="ddp_spawn"`` (and ``ddp_fork``, ``ddp_notebook``) run the whole fit in processes
the launcher starts; the monitor there is a copy, and Lightning brings back only the weights,
the best checkpoint's path and ``trainer.callback_metrics``. So rank 0's copy writes its state
to a file named when the monitor was made (:meth:`WorkerResults.send`), and the monitor in the
process that made it reads it back the first time its results are asked for
(:meth:`WorkerResults.receive`), then removes it.
"""

from __future__ import annotations

import os
import tempfile
import uuid
import weakref
from typing import Any, Optional

import torch
from lightning_utilities.core.rank_zero import rank_zero_warn

__all__ = ["WorkerResults"]


class WorkerResults:
    """Where a copy of the monitor running in another process leaves its results for the original.

    Made with the monitor, in the process that made it (its home); pickled copies and forked
    processes keep the same file name and home.
    """

    def __init__(self) -> None:
        self.path = os.path.join(tempfile.gettempdir(), f"filterviz-results-{uuid.uuid4().hex}.pt")
        self.home = os.getpid()
        # A file never read (the monitor dropped before its results were asked for) goes with it.
        weakref.finalize(self, _remove_at_home, self.path, self.home)

    def away_from_home(self) -> bool:
        """Whether this copy runs in a process a launcher started, not where the monitor was made."""
        return os.getpid() != self.home

    def send(self, results: dict[str, Any], log_dir: Optional[str]) -> None:
        """Leave ``results`` (tensors, numbers, strings and plain containers) for the monitor at home.

        A failure is warned about, never raised: the run is over, and its history files hold the rest.
        """
        partial = f"{self.path}.{os.getpid()}.partial"
        try:
            torch.save(results, partial)
            os.replace(partial, self.path)  # whole or not at all: the home process never reads half
        except Exception as error:
            _remove(partial)
            where = f" in {log_dir}" if log_dir else ""
            rank_zero_warn(
                "filterviz: the monitor's results (dead and dormant filters, dataset examples) could not be "
                f"handed back to the main process ({type(error).__name__}: {error}); the history files{where} "
                "hold them."
            )

    def receive(self) -> Optional[dict[str, Any]]:
        """What a copy in another process left, once, at home; ``None`` when nothing was left."""
        if self.away_from_home() or not os.path.exists(self.path):
            return None
        try:
            results = torch.load(self.path, weights_only=True)
        except Exception as error:
            rank_zero_warn(
                f"filterviz: could not read the results that the fit's processes left in {self.path} "
                f"({type(error).__name__}: {error}); the history files in the log directory hold them."
            )
            results = None
        _remove(self.path)
        return results


def _remove_at_home(path: str, home: int) -> None:
    if os.getpid() == home:
        _remove(path)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
