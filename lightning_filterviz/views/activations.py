"""Each conv's feature maps on the probe, with dead filters' maps framed."""

from __future__ import annotations

from typing import Optional

from lightning_filterviz.core.records import Rendered, Snapshot
from lightning_filterviz.core.tags import ACTIVATIONS, EACH_LAYER, LoggedTag, layer_tag
from lightning_filterviz.drawing.render import SIGNED_COLORMAP, activation_grid
from lightning_filterviz.views.registry import View, ViewContext, register_view


@register_view
class Activations(View):
    tags = (
        LoggedTag(
            layer_tag(ACTIVATIONS, EACH_LAYER), "image", "the feature maps of the conv's activation on the probe"
        ),
    )

    def at_snapshot(self, snapshot: Snapshot, context: ViewContext) -> Optional[Rendered]:
        if not context.settings.log_activations:
            return None
        images = {}
        for name, layer in snapshot.layers.items():
            if layer.maps is None:
                continue
            # A conv without an activation shows its signed output, on a diverging colormap.
            colormap = SIGNED_COLORMAP if layer.pre_activation else context.settings.colormap
            marked = snapshot.dead_filters.get(name, ())
            images[layer_tag(ACTIVATIONS, name)] = activation_grid(
                layer.maps, marked, colormap, signed=layer.pre_activation
            )
        return Rendered(snapshot.step, images=images)
