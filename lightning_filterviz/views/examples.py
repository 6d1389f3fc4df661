"""Per conv, each drawn filter beside the dataset examples it fires on most, at each validation run."""

from __future__ import annotations

from typing import Optional

import numpy as np

from lightning_filterviz.core.history import examples_history_file
from lightning_filterviz.core.records import DatasetExamples, Rendered
from lightning_filterviz.core.tags import EACH_LAYER, EXAMPLES, FIRST_CONV_BY_DEFAULT, LoggedTag, layer_tag
from lightning_filterviz.drawing.example_images import example_tiles, examples_grid
from lightning_filterviz.views.registry import View, ViewContext, register_view


@register_view
class DatasetExampleGrids(View):
    tags = (
        LoggedTag(
            layer_tag(EXAMPLES, EACH_LAYER),
            "image",
            f"the dataset examples each drawn filter fires on most {FIRST_CONV_BY_DEFAULT}, written by "
            "``publish_dataset_examples`` (the monitor: at each validation run of ``fit``)",
        ),
    )

    def at_examples(self, examples: DatasetExamples, context: ViewContext) -> Optional[Rendered]:
        images, tiles = {}, {}
        for name, found in examples.layers.items():
            values = found.values.numpy()
            tiles[name] = example_tiles(found.patches.numpy(), np.isfinite(values), found.boxes.numpy())
            weight = examples.weights[name].numpy()
            images[layer_tag(EXAMPLES, name)] = examples_grid(weight, examples.rgb[name], tiles[name], values)
        # The history keeps the same tiles, so that the report draws what the loggers showed.
        history = (examples_history_file(examples.step, examples.layers, tiles),) if context.keeps_history else ()
        return Rendered(examples.step, images=images, history=history)
