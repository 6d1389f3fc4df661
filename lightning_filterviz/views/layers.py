"""The table of watched convs and their activations, once per run."""

from __future__ import annotations

from typing import Optional

from lightning_filterviz.core.layer_table import layer_table
from lightning_filterviz.core.records import Rendered, Snapshot
from lightning_filterviz.core.tags import LAYERS_TAG, LoggedTag
from lightning_filterviz.views.registry import View, ViewContext, register_view


@register_view
class Layers(View):
    tags = (LoggedTag(LAYERS_TAG, "text", "each watched conv and the activation it maps to, once"),)

    def at_snapshot(self, snapshot: Snapshot, context: ViewContext) -> Optional[Rendered]:
        return Rendered(snapshot.step, tables={LAYERS_TAG: layer_table(snapshot)}) if snapshot.describes_layers else None
