"""Per conv whose activation (or output) the probe saw, its representation's health signals."""

from __future__ import annotations

from typing import Optional

from lightning_filterviz.core.records import Rendered, Snapshot
from lightning_filterviz.core.tags import CKA_TO_FIRST, EACH_LAYER, EFFECTIVE_RANK, SRANK, LoggedTag, layer_tag
from lightning_filterviz.views.registry import View, ViewContext, register_view


@register_view
class Health(View):
    tags = (
        LoggedTag(layer_tag(EFFECTIVE_RANK, EACH_LAYER), "scalar", "effective rank of the layer's probe features"),
        LoggedTag(layer_tag(SRANK, EACH_LAYER), "scalar", "srank (delta 0.01) of the layer's probe features"),
        LoggedTag(
            layer_tag(CKA_TO_FIRST, EACH_LAYER), "scalar", "linear CKA of the layer's probe features to the first snapshot's"
        ),
    )

    def at_snapshot(self, snapshot: Snapshot, context: ViewContext) -> Optional[Rendered]:
        scalars: dict[str, float] = {}
        for name, health in snapshot.health.items():
            scalars[layer_tag(EFFECTIVE_RANK, name)] = health.effective_rank
            scalars[layer_tag(SRANK, name)] = float(health.srank)
            scalars[layer_tag(CKA_TO_FIRST, name)] = health.cka_to_first
        return Rendered(snapshot.step, scalars=scalars)
