"""Each drawn filter beside the probe patch it peaks on."""

from __future__ import annotations

from typing import Optional

from lightning_filterviz.core.records import Rendered, RunEnding, Snapshot
from lightning_filterviz.core.tags import AT_VIEWS, EACH_LAYER, FIRST_CONV_BY_DEFAULT, RESPONSES, LoggedTag, layer_tag
from lightning_filterviz.drawing.responses import peak_patches, response_grid
from lightning_filterviz.views.registry import View, ViewContext, register_view


@register_view
class Responses(View):
    tags = (
        LoggedTag(
            layer_tag(RESPONSES, EACH_LAYER),
            "image",
            f"each drawn filter beside the probe patch it peaks on {FIRST_CONV_BY_DEFAULT}, {AT_VIEWS}",
        ),
    )

    def at_snapshot(self, snapshot: Snapshot, context: ViewContext) -> Optional[Rendered]:
        # The probe pass sends receptive fields only with the snapshots that draw the views.
        images = {}
        for name, field in snapshot.receptive_fields.items():
            layer = snapshot.layers[name]
            assert snapshot.probe_inputs is not None and layer.peak_index is not None and layer.output_hw is not None
            patches = peak_patches(snapshot.probe_inputs, layer.peak_index, layer.output_hw, field)
            images[layer_tag(RESPONSES, name)] = response_grid(layer.weight, layer.rgb, patches)
        return Rendered(snapshot.step, images=images)

    def at_ending(self, ending: RunEnding, context: ViewContext) -> Optional[Rendered]:
        # The trained model's last look, when the snapshot at the last step did not draw this view.
        return self.at_snapshot(ending.final, context) if ending.final is not None else None
