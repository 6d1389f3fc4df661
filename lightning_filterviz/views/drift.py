"""Per conv, how far its filters have turned from their initial weights, and how their norm changed."""

from __future__ import annotations

from typing import Optional

from lightning_filterviz.core.records import Rendered, Snapshot
from lightning_filterviz.core.tags import DRIFT, EACH_LAYER, WEIGHT_NORM_RATIO, LoggedTag, layer_tag
from lightning_filterviz.views.registry import View, ViewContext, register_view


@register_view
class Drift(View):
    tags = (
        LoggedTag(layer_tag(DRIFT, EACH_LAYER), "scalar", "mean cosine distance of the filters from their initial weights"),
        LoggedTag(layer_tag(WEIGHT_NORM_RATIO, EACH_LAYER), "scalar", "mean filter norm over its initial value"),
    )

    def at_snapshot(self, snapshot: Snapshot, context: ViewContext) -> Optional[Rendered]:
        scalars = {}
        for name, drift in snapshot.drift.items():
            scalars[layer_tag(DRIFT, name)] = float(drift.numpy().mean())
            scalars[layer_tag(WEIGHT_NORM_RATIO, name)] = float(snapshot.weight_norm_ratio[name].numpy().mean())
        return Rendered(snapshot.step, scalars=scalars)
