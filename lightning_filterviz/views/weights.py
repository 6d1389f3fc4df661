"""Each conv's filters, normalized, with dead ones framed."""

from __future__ import annotations

from typing import Optional

from lightning_filterviz.core.records import Rendered, Snapshot
from lightning_filterviz.core.tags import EACH_LAYER, WEIGHTS, LoggedTag, layer_tag
from lightning_filterviz.drawing.render import weight_grid
from lightning_filterviz.views.registry import View, ViewContext, register_view


@register_view
class Weights(View):
    tags = (LoggedTag(layer_tag(WEIGHTS, EACH_LAYER), "image", "the layer's filters, normalized"),)

    def at_snapshot(self, snapshot: Snapshot, context: ViewContext) -> Optional[Rendered]:
        settings = context.settings
        if not settings.log_weights:
            return None
        drawn = context.drawn_filters(snapshot)
        images = {
            layer_tag(WEIGHTS, name): weight_grid(
                drawn[name],
                settings.weight_normalization,
                snapshot.symmetric_ranges.get(name),
                snapshot.dead_filters.get(name, ()),
                layer.rgb,
            )
            for name, layer in snapshot.layers.items()
        }
        return Rendered(snapshot.step, images=images)
