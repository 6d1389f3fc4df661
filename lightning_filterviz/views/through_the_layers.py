"""Each probe image as every watched layer sees it, early to deep."""

from __future__ import annotations

from typing import Optional

from lightning_filterviz.core.records import Rendered, RunEnding, Snapshot
from lightning_filterviz.core.tags import AT_VIEWS, TAG_PREFIX, THROUGH_THE_LAYERS, LoggedTag, layer_tag
from lightning_filterviz.drawing.responses import through_the_layers
from lightning_filterviz.views.registry import View, ViewContext, register_view


@register_view
class ThroughTheLayers(View):
    tags = (
        LoggedTag(
            f"{TAG_PREFIX}/{THROUGH_THE_LAYERS}/<i>",
            "image",
            f"probe image ``i`` as every watched layer sees it (its busiest channels), {AT_VIEWS}",
        ),
    )

    def at_snapshot(self, snapshot: Snapshot, context: ViewContext) -> Optional[Rendered]:
        with_maps = {name: layer.maps for name, layer in snapshot.layers.items() if layer.maps is not None}
        if not with_maps or not snapshot.draw_views:
            return None
        images = {}
        for image in range(min(len(maps) for maps in with_maps.values())):
            seen = {name: maps[image] for name, maps in with_maps.items()}
            images[layer_tag(THROUGH_THE_LAYERS, str(image))] = through_the_layers(seen, colormap=context.settings.colormap)
        return Rendered(snapshot.step, images=images)

    def at_ending(self, ending: RunEnding, context: ViewContext) -> Optional[Rendered]:
        # The trained model's last look, when the snapshot at the last step did not draw this view.
        return self.at_snapshot(ending.final, context) if ending.final is not None else None
