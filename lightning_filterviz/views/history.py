"""Each snapshot's arrays for the run's history files (see :mod:`lightning_filterviz.core.history`)."""

from __future__ import annotations

from typing import Optional

from lightning_filterviz.core.history import snapshot_history_file
from lightning_filterviz.core.records import Rendered, Snapshot
from lightning_filterviz.views.registry import View, ViewContext, register_view


@register_view
class SnapshotHistory(View):
    def at_snapshot(self, snapshot: Snapshot, context: ViewContext) -> Optional[Rendered]:
        if not context.keeps_history:
            return None
        return Rendered(snapshot.step, history=(snapshot_history_file(snapshot, context.drawn_filters(snapshot)),))
