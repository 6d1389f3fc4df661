"""Per conv judged for dead filters (a ReLU-family activation), the fraction that is dead."""

from __future__ import annotations

from typing import Optional

from lightning_filterviz.core.records import Rendered, Snapshot
from lightning_filterviz.core.tags import DEAD_FRACTION, EACH_LAYER, LoggedTag, layer_tag
from lightning_filterviz.views.registry import View, ViewContext, register_view


@register_view
class DeadFraction(View):
    tags = (
        LoggedTag(layer_tag(DEAD_FRACTION, EACH_LAYER), "scalar", "dead filters / all filters (ReLU-family activations)"),
    )

    def at_snapshot(self, snapshot: Snapshot, context: ViewContext) -> Optional[Rendered]:
        scalars = {
            layer_tag(DEAD_FRACTION, name): len(snapshot.dead_filters[name]) / layer.out_channels
            for name, layer in snapshot.layers.items()
            if name in snapshot.dead_filters
        }
        return Rendered(snapshot.step, scalars=scalars)
