"""Per conv, its filters' drift and norm ratio as a strip of cells."""

from __future__ import annotations

from typing import Optional

from lightning_filterviz.core.records import Rendered, RunEnding, Snapshot
from lightning_filterviz.core.tags import AT_VIEWS, DRIFT_STRIP, EACH_LAYER, LoggedTag, layer_tag
from lightning_filterviz.drawing.render import drift_strip
from lightning_filterviz.views.registry import View, ViewContext, register_view


@register_view
class DriftStrip(View):
    tags = (
        LoggedTag(
            layer_tag(DRIFT_STRIP, EACH_LAYER), "image", f"drift and norm ratio per filter, {AT_VIEWS}"
        ),
    )

    def at_snapshot(self, snapshot: Snapshot, context: ViewContext) -> Optional[Rendered]:
        if not snapshot.draw_views or not context.settings.log_weights:
            return None
        return _strips(snapshot, context.settings.colormap)

    def at_ending(self, ending: RunEnding, context: ViewContext) -> Optional[Rendered]:
        # The latest snapshot's strips, at its own step, when it did not draw them itself.
        if ending.latest is None or not context.settings.log_weights:
            return None
        return _strips(ending.latest, context.settings.colormap)


def _strips(snapshot: Snapshot, colormap: str) -> Rendered:
    ratios = snapshot.weight_norm_ratio
    images = {
        layer_tag(DRIFT_STRIP, name): drift_strip(drift.numpy(), ratios[name].numpy(), colormap)
        for name, drift in snapshot.drift.items()
    }
    return Rendered(snapshot.step, images=images)
