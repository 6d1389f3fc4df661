"""Per conv of ``featvis_layers``, each drawn filter beside its feature visualization."""

from __future__ import annotations

from typing import Optional

from lightning_filterviz.core.filters import displayed_filters
from lightning_filterviz.core.history import feature_vis_history_file
from lightning_filterviz.core.records import FeatureVisualizations, Rendered
from lightning_filterviz.core.tags import EACH_LAYER, FEATURE_VIS, LoggedTag, layer_tag
from lightning_filterviz.drawing.filter_frames import rgb_pictures
from lightning_filterviz.drawing.responses import response_grid
from lightning_filterviz.views.registry import View, ViewContext, register_view


@register_view
class FeatureVisGrids(View):
    tags = (
        LoggedTag(
            layer_tag(FEATURE_VIS, EACH_LAYER),
            "image",
            "each drawn filter beside its feature visualization, the input optimized to raise its mean rectified response "
            "(``featvis_layers``; the monitor: at the end of each validation run of ``fit``)",
        ),
    )

    def at_feature_vis(self, visuals: FeatureVisualizations, context: ViewContext) -> Optional[Rendered]:
        images, filters = {}, {}
        for name, pictures in visuals.images.items():
            weight = visuals.weights[name].numpy()
            rgb = visuals.rgb[name]
            images[layer_tag(FEATURE_VIS, name)] = response_grid(weight, rgb, rgb_pictures(pictures))
            filters[name] = displayed_filters(weight, rgb)
        # The history keeps the visualizations as displayed, and the filters they belong to.
        history = (feature_vis_history_file(visuals.step, visuals.images, filters),) if context.keeps_history else ()
        return Rendered(visuals.step, images=images, history=history)

