"""A conv's filters at every snapshot so far, one row per snapshot."""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from lightning_filterviz.core.records import Rendered, RunEnding, Snapshot
from lightning_filterviz.core.tags import AT_VIEWS, EACH_LAYER, FILMSTRIP, FIRST_CONV_BY_DEFAULT, LoggedTag, layer_tag
from lightning_filterviz.drawing.render import filmstrip
from lightning_filterviz.views.registry import View, ViewContext, register_view


@register_view
class Filmstrip(View):
    tags = (
        LoggedTag(
            layer_tag(FILMSTRIP, EACH_LAYER),
            "image",
            f"the filters at every snapshot so far {FIRST_CONV_BY_DEFAULT}, {AT_VIEWS}",
        ),
    )

    def at_snapshot(self, snapshot: Snapshot, context: ViewContext) -> Optional[Rendered]:
        # The run state hands the rows over only with the snapshots that draw the views.
        return _filmstrips(snapshot.step, snapshot.filmstrips) if context.settings.log_weights else None

    def at_ending(self, ending: RunEnding, context: ViewContext) -> Optional[Rendered]:
        return _filmstrips(ending.step, ending.filmstrips) if context.settings.log_weights else None


def _filmstrips(step: int, rows: Mapping[str, tuple[np.ndarray, ...]]) -> Rendered:
    return Rendered(step, images={layer_tag(FILMSTRIP, name): filmstrip(layer_rows) for name, layer_rows in rows.items()})
