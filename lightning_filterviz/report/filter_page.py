"""The report's filter page: every drawn filter of one layer over the run, as the Filters tab
shows one filter.

An index of the layer's filters (each a link, marked with its state at the last snapshot),
then a section per filter: its weights at every snapshot, its feature maps at the snapshots
that kept them, its dataset examples at each validation run, its feature visualizations
(where validation runs made them) and its curves (mean activation, dormant score, drift,
norm ratio, gradient score) with its dead and dormant snapshots shaded, and its
gradient-dormant ones behind its gradient score.
The frames are drawn by :mod:`lightning_filterviz.drawing.filter_frames`, as the tab draws
them, so a frame has the pixels of the filter's tile in the TensorBoard image of its step.
"""

from __future__ import annotations

import html
import re
from typing import Sequence

import numpy as np

from lightning_filterviz.core.png import encode_png
from lightning_filterviz.core.tiles import resize_nearest
from lightning_filterviz.drawing.filter_frames import (
    Sprite,
    examples_sprite,
    feature_vis_sprite,
    maps_sprite,
    weights_sprite,
)
from lightning_filterviz.report.filter_series import (
    CURVES,
    DEAD,
    DORMANT,
    GRADIENT_CURVES,
    STATE_NAMES,
    UNKNOWN,
    LayerTimeline,
    layer_timeline,
)
from lightning_filterviz.report.images import FilterCurvesChart, data_uri, evenly_spaced
from lightning_filterviz.report.runs import Run

__all__ = ["FRAME_DISPLAY_SCALE", "filter_anchor", "filter_page_html"]

# Weights and feature maps are shown this many times their pixel size, unsmoothed (a 3 x 3
# kernel is drawn 24 pixels wide); dataset examples at their own size, as in the loggers.
FRAME_DISPLAY_SCALE = 2
# White pixels between a timeline's frames, so that neighbouring filters' tiles read apart.
FRAME_GAP = 2
EXAMPLES_DISPLAY_SCALE = 1
# A long run validates many times; past this many, a filter's dataset examples are shown for
# this many validation runs, evenly spaced (first and last kept): each row is k photos.
MAX_EXAMPLES_ROWS = 12
# Feature visualizations are the model's input size: shown at their own size from this side on.
FEATURE_VIS_OWN_SIZE = 64
# Frames of a filter's feature visualizations in a row: they are larger than its other frames.
FEATURE_VIS_COLUMNS = 6
# A panel's range is widened by this part of it on either side, so a curve on its bound stays visible.
CURVE_MARGIN = 0.06


def filter_anchor(layer: str, index: int, prefix: str = "") -> str:
    """The HTML id of a filter's section: ``filter-<layer>-<index>``, ``prefix`` before it.

    Characters other than ASCII letters, digits, ``_`` and ``.`` are written ``-<hex>-``, so
    any layer name gives a valid id that is also a plain URL fragment, and no two names the same one.
    """
    return f"{prefix}filter-{_id_part(layer)}-{index}"


def _id_part(layer: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]", lambda match: f"-{ord(match.group()):x}-", layer)


def filter_page_html(run: Run, layer: str, anchor_prefix: str = "") -> list[str]:
    """The "Filters of <layer>" section of one run: the index, then one section per drawn filter.

    Args:
        run: the run.
        layer: a conv layer of the run.
        anchor_prefix: put before every id of the section, so that several runs on one page
            keep their ids apart.

    Returns:
        HTML fragments.

    Warns:
        ReportWarning: for a file whose feature maps cannot be read again (see
            :func:`~lightning_filterviz.report.filter_series.layer_timeline`).
    """
    timeline = layer_timeline(run, layer)
    index_id = f"{anchor_prefix}filters-of-{_id_part(layer)}"
    gradient_panels = [number for number, key in enumerate(CURVES) if key in GRADIENT_CURVES]
    chart = FilterCurvesChart(timeline.steps, _panels(timeline), gradient_panels)
    try:
        sections = [
            _filter_section(timeline, index, chart, filter_anchor(layer, index, anchor_prefix), index_id)
            for index in range(timeline.drawn)
        ]
    finally:
        chart.close()
    return [
        f'<section class="filter-page" id="{index_id}"><h3>Filters of {html.escape(layer)}</h3>',
        _intro(timeline),
        _index(timeline, anchor_prefix),
        *sections,
        "</section>",
    ]


# ---------------------------------------------------------------- the index


def _intro(timeline: LayerTimeline) -> str:
    steps = timeline.steps
    drawn = (
        f"all {timeline.out_channels} filters"
        if timeline.drawn == timeline.out_channels
        else f"filters 0 to {timeline.drawn - 1} of {timeline.out_channels} (the history keeps these, max_filters)"
    )
    return (
        f"<p>{drawn} of {html.escape(timeline.layer)} over {_plural(len(steps), 'snapshot')} "
        f"(steps {steps[0]} to {steps[-1]}). Each filter's weights are scaled to its own min..max; its feature "
        "map is drawn on the layer's range, on the first probe image. The index gives each filter's state at "
        "the last snapshot.</p>"
    )


def _index(timeline: LayerTimeline, anchor_prefix: str) -> str:
    """A link per filter, marked with its state at the last snapshot."""
    links = []
    for index in range(timeline.drawn):
        state = STATE_NAMES[int(timeline.state[index, -1])]
        links.append(
            f'<a class="chip {state}" href="#{filter_anchor(timeline.layer, index, anchor_prefix)}" '
            f'title="filter {index}: {state}">{index}<small>{state}</small></a>'
        )
    return f'<nav class="filter-index">{"".join(links)}</nav>'


# ---------------------------------------------------------------- one filter


def _filter_section(timeline: LayerTimeline, index: int, chart: FilterCurvesChart, anchor: str, index_id: str) -> str:
    state = timeline.state[index]
    last = STATE_NAMES[int(state[-1])]
    heading = (
        f'<h4>Filter {index} <span class="chip {last}">{html.escape(_state_text(state, timeline.steps))}</span>'
        f' <a class="back" href="#{index_id}">index</a></h4>'
    )
    frames = [
        _strip(
            "Weights", weights_sprite(timeline.filters[:, index], FRAME_GAP), timeline.steps, f"weights of filter {index}"
        ),
        _maps_strip(timeline, index),
        _examples_block(timeline, index),
        _feature_vis_strip(timeline, index),
    ]
    values = [timeline.curves[key][index] for key in CURVES]
    curves = chart.png(values, state == DEAD, state == DORMANT, timeline.grad_dormant[index])
    figure = (
        f'<figure class="curves"><img alt="curves of filter {index}" src="{data_uri(curves)}">'
        f"<figcaption>Shaded: dead (red), dormant (amber); behind the gradient score, gradient-dormant (purple): "
        f"its weights got no gradient. {_gradient_note(timeline)}Every filter of the layer on the same scales."
        "</figcaption></figure>"
    )
    return (
        f'<section class="filter" id="{anchor}">{heading}'
        f'<div class="filter-body"><div class="frames">{"".join(frames)}</div>{figure}</div></section>'
    )


def _maps_strip(timeline: LayerTimeline, index: int) -> str:
    if not timeline.maps:
        return _note("Feature maps", "No snapshot of this layer kept its feature maps.")
    sprite = maps_sprite(timeline.maps, index, timeline.signed, FRAME_GAP)
    return _strip("Feature maps", sprite, timeline.maps_steps, f"feature maps of filter {index}")


def _examples_block(timeline: LayerTimeline, index: int) -> str:
    """One row per validation run: its step, then the filter's examples, strongest first."""
    having = [(step, patches[index], values[index]) for step, patches, values in timeline.examples if index < len(patches)]
    if not having:
        return _note("Dataset examples", "No validation run collected dataset examples of this layer.")
    runs = evenly_spaced(having, MAX_EXAMPLES_ROWS)
    # Files from before the context windows hold smaller examples: shown at the size of the others.
    size = max(patches.shape[1] for _, patches, _ in runs)
    resized = [(resize_nearest(patches, size, size, first_axis=1), values) for _, patches, values in runs]
    sprite = examples_sprite(resized, FRAME_GAP)
    height = sprite.tile[0]
    rows = []
    for row, (step, _, _) in enumerate(runs):
        top = row * (height + sprite.gap)
        pixels = sprite.image[top : top + height]
        rows.append(
            f'<div class="example-row"><span class="example-step">step {step}</span>'
            f"{_pixels_img(pixels, f'dataset examples of filter {index} at step {step}', EXAMPLES_DISPLAY_SCALE)}</div>"
        )
    shown = f"{len(runs)} of {len(having)}" if len(runs) < len(having) else f"{len(runs)}"
    caption = f"strongest first, {shown} validation run{'' if len(having) == 1 else 's'}"
    return f'<div class="strip"><div class="strip-title">Dataset examples <small>{caption}</small></div>{"".join(rows)}</div>'


def _feature_vis_strip(timeline: LayerTimeline, index: int) -> str:
    """The filter's feature visualization at each validation run that made one (nothing when
    none did: they are made for the ``featvis_layers`` only)."""
    having = [(step, images[index]) for step, images in timeline.feature_vis if index < len(images)]
    if not having:
        return ""
    sprite = feature_vis_sprite([image for _, image in having], FRAME_GAP, FEATURE_VIS_COLUMNS)
    scale = FRAME_DISPLAY_SCALE if sprite.tile[0] < FEATURE_VIS_OWN_SIZE else 1
    steps = [step for step, _ in having]
    return _strip(
        "Feature visualizations",
        sprite,
        steps,
        f"feature visualizations of filter {index}",
        what="validation run",
        scale=scale,
        hint="the input that raises its mean rectified response most",
    )


def _strip(
    title: str,
    sprite: Sprite,
    steps: Sequence[int],
    alt: str,
    what: str = "snapshot",
    scale: int = FRAME_DISPLAY_SCALE,
    hint: str = "",
) -> str:
    """A sprite of frames with the first and last step under it."""
    labels = (
        f'<div class="strip-steps"><span>step {steps[0]}</span><span>{_plural(len(steps), what)}</span>'
        f"<span>step {steps[-1]}</span></div>"
    )
    wrapped = f", {sprite.columns} a row" if len(steps) > sprite.columns else ""
    hint = f"{html.escape(hint)}, " if hint else ""
    return (
        f'<div class="strip"><div class="strip-title">{title} <small>{hint}left to right{wrapped}</small></div>'
        f'<div class="strip-frames">{_pixels_img(sprite.image, alt, scale)}{labels}</div></div>'
    )


def _pixels_img(pixels: np.ndarray, alt: str, scale: int = FRAME_DISPLAY_SCALE) -> str:
    width = scale * pixels.shape[1]
    return f'<img class="pixels" width="{width}" alt="{html.escape(alt)}" src="{data_uri(encode_png(pixels))}">'


def _gradient_note(timeline: LayerTimeline) -> str:
    """Why the gradient score has no curve, where it has none for the whole layer."""
    if not np.isfinite(timeline.curves["grad_score"]).any():
        if timeline.frozen:
            return "The conv is frozen (its weight does not require grad): no gradient score. "
        return "No snapshot read this layer's gradients (the first snapshot never does; older histories lack them). "
    return ""


def _note(title: str, text: str) -> str:
    return f'<div class="strip"><div class="strip-title">{title}</div><p class="none">{html.escape(text)}</p></div>'


# ---------------------------------------------------------------- words and scales


def _panels(timeline: LayerTimeline) -> list[tuple[str, tuple[float, float]]]:
    """Each curve's title and range over the drawn filters, shared by all of them."""
    return [
        (title, _value_range(timeline.curves[key][: timeline.drawn], from_zero=key != "norm_ratio"))
        for key, title in CURVES.items()
    ]


def _value_range(table: np.ndarray, from_zero: bool) -> tuple[float, float]:
    """The range of a panel, with a margin: the values', from 0 where ``from_zero`` (the
    norm ratio stays near 1: from 0, its changes would be flattened)."""
    finite = table[np.isfinite(table)]
    low = float(finite.min()) if finite.size else 0.0
    low = min(0.0, low) if from_zero else low
    high = float(finite.max()) if finite.size else 1.0
    if high <= low:
        high = low + 1.0
    margin = CURVE_MARGIN * (high - low)
    return low - margin, high + margin


def _state_text(state: np.ndarray, steps: Sequence[int]) -> str:
    """"dead since step 40", "alive at every snapshot": the state at the last snapshot, and since when."""
    last = int(state[-1])
    name = STATE_NAMES[last] if last != UNKNOWN else "no activation statistics"
    since = len(state) - 1
    while since > 0 and state[since - 1] == last:
        since -= 1
    if since > 0:
        return f"{name} since step {steps[since]}"
    return f"{name} at every snapshot" if len(state) > 1 else f"{name} at step {steps[0]}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"

