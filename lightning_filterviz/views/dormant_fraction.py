"""Per conv whose activation the probe saw, the fraction of its filters that is dormant."""

from __future__ import annotations

from typing import Optional

from lightning_filterviz.core.records import Rendered, Snapshot
from lightning_filterviz.core.tags import DORMANT_FRACTION, EACH_LAYER, LoggedTag, layer_tag
from lightning_filterviz.views.registry import View, ViewContext, register_view


@register_view
class DormantFraction(View):
    tags = (LoggedTag(layer_tag(DORMANT_FRACTION, EACH_LAYER), "scalar", "dormant filters / all filters"),)

    def at_snapshot(self, snapshot: Snapshot, context: ViewContext) -> Optional[Rendered]:
        scalars = {
            layer_tag(DORMANT_FRACTION, name): len(snapshot.dormant_filters[name]) / layer.out_channels
            for name, layer in snapshot.layers.items()
            if name in snapshot.dormant_filters
        }
        return Rendered(snapshot.step, scalars=scalars)
