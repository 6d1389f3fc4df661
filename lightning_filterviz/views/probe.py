"""The probe images, at a run's first snapshot and at its end."""

from __future__ import annotations

from typing import Optional

from lightning_filterviz.core.records import Rendered, RunEnding, Snapshot
from lightning_filterviz.core.tags import PROBE_TAG, LoggedTag
from lightning_filterviz.drawing.render import probe_image_grid
from lightning_filterviz.views.registry import View, ViewContext, register_view


@register_view
class ProbeImages(View):
    tags = (LoggedTag(PROBE_TAG, "image", "the probe images, at the first snapshot and at the end"),)

    def at_snapshot(self, snapshot: Snapshot, context: ViewContext) -> Optional[Rendered]:
        if snapshot.probe_images is None or not context.settings.log_activations:
            return None
        return Rendered(snapshot.step, images={PROBE_TAG: probe_image_grid(snapshot.probe_images)})

    def at_ending(self, ending: RunEnding, context: ViewContext) -> Optional[Rendered]:
        # Again at the last step, so that every image of the run's first step has one there.
        if ending.probe_images is None or not context.settings.log_activations:
            return None
        return Rendered(ending.step, images={PROBE_TAG: probe_image_grid(ending.probe_images)})
