"""The pictures and numbers one snapshot becomes: each view a small function of the snapshot.

A view takes the captured and judged :class:`~lightning_filterviz.core.records.Snapshot` and the
settings and returns tagged images (or scalars). :data:`SNAPSHOT_VIEWS` lists the views drawn
at every snapshot, in order; adding a view is adding a function there. Everything here is
NumPy, so it can run on the writer thread without starting a second OpenMP team.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from lightning_filterviz.core.records import Snapshot, Table
from lightning_filterviz.core.filters import displayed_filters
from lightning_filterviz.drawing.render import (
    SIGNED_COLORMAP,
    activation_grid,
    drift_strip,
    filmstrip,
    probe_image_grid,
    weight_grid,
)
from lightning_filterviz.views.responses import peak_patches, response_grid, through_the_layers
from lightning_filterviz.core.settings import VisualizerSettings
from lightning_filterviz.core.tags import (
    ACTIVATIONS,
    DEAD_FRACTION,
    DORMANT_FRACTION,
    DRIFT,
    DRIFT_STRIP,
    FILMSTRIP,
    PROBE_TAG,
    RESPONSES,
    THROUGH_THE_LAYERS,
    WEIGHT_NORM_RATIO,
    WEIGHTS,
    layer_tag,
)
from lightning_filterviz.core.tiles import Image

__all__ = [
    "SNAPSHOT_VIEWS",
    "dead_filter_table",
    "drawn_filters",
    "drift_strip_images",
    "filmstrip_images",
    "snapshot_images",
    "snapshot_scalars",
]

DrawnFilters = Mapping[str, np.ndarray]
View = Callable[[Snapshot, VisualizerSettings, DrawnFilters], dict[str, Image]]


def snapshot_images(snapshot: Snapshot, settings: VisualizerSettings, drawn: DrawnFilters) -> dict[str, Image]:
    """Every image one snapshot logs, by tag, in the order :data:`SNAPSHOT_VIEWS` draws them."""
    images: dict[str, Image] = {}
    for view in SNAPSHOT_VIEWS:
        images.update(view(snapshot, settings, drawn))
    return images


def drawn_filters(snapshot: Snapshot) -> dict[str, np.ndarray]:
    """Per layer, the drawn part of its filters (:func:`displayed_filters`), found once for
    the weight grid and the history."""
    return {name: displayed_filters(layer.weight.numpy(), layer.rgb) for name, layer in snapshot.layers.items()}


def dead_filter_table(dead: dict[str, list[int]], out_channels: dict[str, int]) -> Table:
    """Layer -> dead filter indices, one row per layer."""
    rows = []
    for layer, indices in dead.items():
        listed = ", ".join(str(index) for index in indices) if indices else "none"
        rows.append((layer, f"{len(indices)} / {out_channels.get(layer, '?')}", listed))
    return Table(columns=("layer", "dead", "indices"), rows=tuple(rows))


def snapshot_scalars(snapshot: Snapshot) -> dict[str, float]:
    """Every scalar one snapshot logs, by tag."""
    scalars: dict[str, float] = {}
    for name, layer in snapshot.layers.items():
        if name in snapshot.dead_filters:
            scalars[layer_tag(DEAD_FRACTION, name)] = len(snapshot.dead_filters[name]) / layer.out_channels
        if name in snapshot.dormant_filters:
            scalars[layer_tag(DORMANT_FRACTION, name)] = len(snapshot.dormant_filters[name]) / layer.out_channels
        if name in snapshot.drift:
            scalars[layer_tag(DRIFT, name)] = float(snapshot.drift[name].numpy().mean())
            scalars[layer_tag(WEIGHT_NORM_RATIO, name)] = float(snapshot.weight_norm_ratio[name].numpy().mean())
    return scalars


def probe_view(snapshot: Snapshot, settings: VisualizerSettings, drawn: DrawnFilters) -> dict[str, Image]:
    if snapshot.probe_images is None or not settings.log_activations:
        return {}
    return {PROBE_TAG: probe_image_grid(snapshot.probe_images)}


def weights_and_activations_view(
    snapshot: Snapshot, settings: VisualizerSettings, drawn: DrawnFilters
) -> dict[str, Image]:
    images: dict[str, Image] = {}
    for name, layer in snapshot.layers.items():
        marked = snapshot.dead_filters.get(name, [])
        if settings.log_weights:
            symmetric_range = snapshot.symmetric_ranges.get(name)
            weights = weight_grid(drawn[name], settings.weight_normalization, symmetric_range, marked, layer.rgb)
            images[layer_tag(WEIGHTS, name)] = weights
        if settings.log_activations and layer.maps is not None:
            colormap = SIGNED_COLORMAP if layer.pre_activation else settings.colormap
            maps = activation_grid(layer.maps, marked, colormap, signed=layer.pre_activation)
            images[layer_tag(ACTIVATIONS, name)] = maps
    return images


def filmstrip_images(snapshot: Snapshot) -> dict[str, Image]:
    """The filmstrips the snapshot carries (with the views, and at the end of the run)."""
    return {layer_tag(FILMSTRIP, name): filmstrip(rows) for name, rows in snapshot.filmstrips.items()}


def filmstrip_view(snapshot: Snapshot, settings: VisualizerSettings, drawn: DrawnFilters) -> dict[str, Image]:
    return filmstrip_images(snapshot) if settings.log_weights else {}


def drift_strip_images(snapshot: Snapshot, colormap: str) -> dict[str, Image]:
    """Per layer, its filters' drift and norm ratio as a strip of cells."""
    ratios = snapshot.weight_norm_ratio
    return {
        layer_tag(DRIFT_STRIP, name): drift_strip(drift.numpy(), ratios[name].numpy(), colormap)
        for name, drift in snapshot.drift.items()
    }


def drift_strip_view(snapshot: Snapshot, settings: VisualizerSettings, drawn: DrawnFilters) -> dict[str, Image]:
    return drift_strip_images(snapshot, settings.colormap) if snapshot.draw_views and settings.log_weights else {}


def responses_view(snapshot: Snapshot, settings: VisualizerSettings, drawn: DrawnFilters) -> dict[str, Image]:
    images: dict[str, Image] = {}
    for name, field in snapshot.receptive_fields.items():
        layer = snapshot.layers[name]
        assert snapshot.probe_inputs is not None and layer.peak_index is not None and layer.output_hw is not None
        patches = peak_patches(snapshot.probe_inputs, layer.peak_index, layer.output_hw, field)
        images[layer_tag(RESPONSES, name)] = response_grid(layer.weight, layer.rgb, patches)
    return images


def through_the_layers_view(snapshot: Snapshot, settings: VisualizerSettings, drawn: DrawnFilters) -> dict[str, Image]:
    with_maps = {name: layer.maps for name, layer in snapshot.layers.items() if layer.maps is not None}
    if not with_maps or not snapshot.draw_views:
        return {}
    images: dict[str, Image] = {}
    for image in range(min(len(maps) for maps in with_maps.values())):
        view = through_the_layers({name: maps[image] for name, maps in with_maps.items()}, colormap=settings.colormap)
        images[layer_tag(THROUGH_THE_LAYERS, str(image))] = view
    return images


SNAPSHOT_VIEWS: tuple[View, ...] = (
    probe_view,
    weights_and_activations_view,
    filmstrip_view,
    drift_strip_view,
    responses_view,
    through_the_layers_view,
)
