"""When the callback takes a snapshot: its cadence, and the snapshots it skips or puts off.

The cadence is every ``every_n_steps`` optimizer steps, or at the end of every
``every_n_epochs``-th epoch (every epoch when neither is set). On top of it a step gets at
most one snapshot; a model whose lazy modules have no weights yet gets its first one
right after the first training forward; and ranks other than 0 take only the one
unpublished snapshot that teaches them what their share of the dataset examples needs.
"""

from __future__ import annotations

from typing import Optional

from lightning_utilities.core.rank_zero import rank_zero_info

from lightning_filterviz.core.settings import check_cadence

__all__ = ["SnapshotSchedule"]


class SnapshotSchedule:
    """The snapshot cadence of one callback, and what it has taken in the current fit.

    Args:
        every_n_epochs: a snapshot at the end of every this many epochs.
        every_n_steps: a snapshot every this many optimizer steps (global steps).

    Raises:
        ValueError: if both are set, or either is not an integer >= 1.
    """

    def __init__(self, every_n_epochs: Optional[int], every_n_steps: Optional[int]) -> None:
        check_cadence(every_n_epochs, every_n_steps)
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.last_step: Optional[int] = None  # kept in the checkpoint
        self.waiting_for_weights = False
        self._ranks_plan_taken = False

    def due_after_batch(self, step: int) -> bool:
        """Whether the cadence asks for a snapshot at the end of the batch that reached ``step``."""
        return self.every_n_steps is not None and step % self.every_n_steps == 0

    def due_after_epoch(self, epoch: int) -> bool:
        """Whether the cadence asks for a snapshot at the end of ``epoch`` (counted from 0)."""
        return self.every_n_steps is None and (epoch + 1) % (self.every_n_epochs or 1) == 0

    def take(self, step: int, *, global_zero: bool, needs_rank_plan: bool, lazy_weights: bool) -> bool:
        """Whether the snapshot asked for at ``step`` is taken now; if so, it is counted as taken.

        Args:
            step: the global step.
            global_zero: whether this is rank 0 (the rank that publishes).
            needs_rank_plan: whether the other ranks collect dataset examples, for which
                each of them takes one unpublished snapshot.
            lazy_weights: whether some weight of the model has no shape yet.
        """
        if step == self.last_step:
            return False
        if not global_zero and (self._ranks_plan_taken or not needs_rank_plan):
            return False
        if lazy_weights:
            if not self.waiting_for_weights:
                rank_zero_info(
                    "filterviz: the model has lazy modules whose weights do not exist yet; the first snapshot "
                    "is taken right after the first training forward, before the first optimizer step."
                )
            self.waiting_for_weights = True
            return False
        self.waiting_for_weights = False
        self.last_step = step
        self._ranks_plan_taken = True
        return True

    def restart(self) -> None:
        """Forget what was taken: a new fit of another model or on other data starts afresh."""
        self.last_step = None
        self.waiting_for_weights = False
        self._ranks_plan_taken = False
