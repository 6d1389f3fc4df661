"""Each snapshot's arrays for the run's history files (see :mod:`lightning_filterviz.core.history`).

The trained model's last look at the end of a run (taken when the last snapshot did not
draw the costlier views) completes that snapshot's file with the feature maps, so that the
history holds the trained model's maps whatever the cadence.
"""

from __future__ import annotations

from typing import Optional

from lightning_filterviz.core.history import snapshot_history_file
from lightning_filterviz.core.records import HistoryFile, Rendered, RunEnding, Snapshot
from lightning_filterviz.views.registry import View, ViewContext, register_view


@register_view
class SnapshotHistory(View):
    def at_snapshot(self, snapshot: Snapshot, context: ViewContext) -> Optional[Rendered]:
        if not context.keeps_history:
            return None
        return Rendered(snapshot.step, history=(snapshot_history_file(snapshot, context.drawn_filters(snapshot)),))

    def at_ending(self, ending: RunEnding, context: ViewContext) -> Optional[Rendered]:
        if not context.keeps_history or ending.final is None:
            return None
        file = snapshot_history_file(ending.final, context.drawn_filters(ending.final))
        return Rendered(ending.step, history=(HistoryFile(file.name, file.arrays, completes=True),))
