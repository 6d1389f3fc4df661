"""Per conv whose gradients were read for a snapshot, the fraction of its filters that is gradient-dormant."""

from __future__ import annotations

from typing import Optional

from lightning_filterviz.core.records import Rendered, Snapshot
from lightning_filterviz.core.tags import EACH_LAYER, GRAD_DORMANT_FRACTION, LoggedTag, layer_tag
from lightning_filterviz.views.registry import View, ViewContext, register_view


@register_view
class GradDormantFraction(View):
    tags = (
        LoggedTag(
            layer_tag(GRAD_DORMANT_FRACTION, EACH_LAYER),
            "scalar",
            "gradient-dormant filters / all filters, from the gradients of the optimizer step before the "
            "snapshot (none at the first snapshot, before any step; none for a frozen conv)",
        ),
    )

    def at_snapshot(self, snapshot: Snapshot, context: ViewContext) -> Optional[Rendered]:
        scalars = {
            layer_tag(GRAD_DORMANT_FRACTION, name): len(snapshot.grad_dormant_filters[name]) / layer.out_channels
            for name, layer in snapshot.layers.items()
            if name in snapshot.grad_dormant_filters
        }
        return Rendered(snapshot.step, scalars=scalars)
