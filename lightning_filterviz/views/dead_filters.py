"""The table of dead filters: per judged conv, how many and which."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from lightning_filterviz.core.records import Rendered, Snapshot, Table
from lightning_filterviz.core.tags import DEAD_FILTERS_TAG, LoggedTag
from lightning_filterviz.views.registry import View, ViewContext, register_view


@register_view
class DeadFilters(View):
    tags = (LoggedTag(DEAD_FILTERS_TAG, "text", "a table of layer -> dead filter indices"),)

    def at_snapshot(self, snapshot: Snapshot, context: ViewContext) -> Optional[Rendered]:
        if not snapshot.dead_filters:  # no conv is judged: nothing to say
            return None
        out_channels = {name: layer.out_channels for name, layer in snapshot.layers.items()}
        return Rendered(snapshot.step, tables={DEAD_FILTERS_TAG: dead_filter_table(snapshot.dead_filters, out_channels)})


def dead_filter_table(dead: Mapping[str, Sequence[int]], out_channels: Mapping[str, int]) -> Table:
    """Layer -> dead filter indices, one row per layer."""
    rows = []
    for layer, indices in dead.items():
        listed = ", ".join(str(index) for index in indices) if indices else "none"
        rows.append((layer, f"{len(indices)} / {out_channels.get(layer, '?')}", listed))
    return Table(columns=("layer", "dead", "indices"), rows=tuple(rows))
