"""The report's HTML: one section per run (summary, charts, final filters, filmstrips, dataset
examples, feature visualizations, the filter page of one layer) and the page.

The page is self-contained: an inline style, no scripts, and images embedded as base64
PNG data URIs, so it can be mailed or archived alone.
"""

from __future__ import annotations

import html
import warnings
from typing import Any, Optional, Sequence

import numpy as np

from lightning_filterviz.drawing.example_images import examples_history_image
from lightning_filterviz.drawing.responses import response_grid
from lightning_filterviz.core.layer_names import resolve_layer_patterns
from lightning_filterviz.core.png import encode_png
from lightning_filterviz.core.tiles import resize_nearest
from lightning_filterviz.report.filter_page import filter_page_html
from lightning_filterviz.report.images import (
    data_uri,
    filmstrip_image,
    filmstrip_rows,
    filter_grid,
    layer_colours,
    line_chart_png,
)
from lightning_filterviz.report.runs import (
    ReportError,
    ReportWarning,
    Run,
    SnapshotRecord,
    drift_series,
    fraction_series,
    health_series,
    read_feature_vis,
)

__all__ = [
    "EXAMPLES_DISPLAY_SCALE",
    "FEATURE_VIS_DISPLAY_SCALE",
    "FILMSTRIP_DISPLAY_SCALE",
    "STYLE",
    "page_html",
    "run_html",
]

# The filmstrip is shown this many times its pixel size.
EXAMPLES_DISPLAY_SCALE = 1  # drawn at their loggers' size already (see examples_history_image)
FILMSTRIP_DISPLAY_SCALE = 2
# Feature visualizations are the model's input size: small inputs (CIFAR's 32 pixels) are
# shown this many times their size, unsmoothed; inputs from this side on at their own size.
FEATURE_VIS_DISPLAY_SCALE = 2
FEATURE_VIS_OWN_SIZE = 64

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; word-break: break-all; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; word-break: break-all; }
figure { margin: 1em 0; }
figcaption { color: #555; font-size: .9em; margin-top: .3em; }
img { max-width: 100%; }
img.pixels { image-rendering: pixelated; }
table { border-collapse: collapse; font-size: .9em; }
td, th { border: 1px solid #ddd; padding: .2em .6em; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.none { color: #777; font-style: italic; }
h3 { margin-top: 1.6em; }
.filter-index { display: flex; flex-wrap: wrap; gap: .3em; margin: .8em 0 1.2em; }
.chip { display: inline-block; border: 1px solid #ccc; border-radius: 3px; padding: .05em .45em;
        font-size: .85em; text-decoration: none; color: #222; background: #f6f6f6; }
.chip small { margin-left: .35em; color: #666; }
.chip.dead { background: #ffcdd2; border-color: #e53935; }
.chip.dormant { background: #ffe9b3; border-color: #ffb300; }
.chip.unknown { background: #fff; border-style: dashed; }
.filter-index .chip.alive small { display: none; }
section.filter { border-top: 1px solid #e4e4e4; padding-top: .4em; margin-top: 1.2em; }
section.filter h4 { margin: .3em 0 .5em; font-size: 1.05em; }
h4 .chip { font-weight: normal; margin-left: .4em; }
a.back { font-size: .8em; font-weight: normal; margin-left: .6em; color: #555; }
.filter-body { display: flex; flex-wrap: wrap; gap: 1.2em; align-items: flex-start; }
.frames { flex: 1 1 360px; min-width: 0; }
.curves { flex: 0 1 576px; margin: 0; }
.strip { margin-bottom: .8em; }
.strip-title { font-size: .85em; font-weight: 600; color: #444; margin-bottom: .2em; }
.strip-title small { font-weight: normal; color: #777; }
.strip-frames { display: inline-block; max-width: 100%; }
.strip-steps { display: flex; justify-content: space-between; gap: 1em; color: #777; font-size: .75em; }
.example-row { display: flex; align-items: center; gap: .5em; }
.example-step { flex: none; width: 5.5em; color: #666; font-size: .8em; }
"""


def run_html(
    run: Run,
    filmstrip_patterns: Optional[Sequence[str]] = None,
    examples_filter: int = 0,
    filter_layer: Optional[str] = None,
    anchor_prefix: str = "",
) -> str:
    """The HTML of one run: a summary, the charts over the steps, the final filters, the filmstrips,
    where validation runs collected them, one filter's dataset examples over time, where
    validation runs made them, the latest feature visualizations, and the filter page of one layer.

    Args:
        run: a run with at least one snapshot.
        filmstrip_patterns: layer names or fnmatch patterns for filmstrips; ``None``: the first layer.
        examples_filter: the filter whose dataset examples are shown, per layer that has them.
        filter_layer: the layer of the filter page; ``None``: the first layer. A layer the
            run lacks gets a note instead.
        anchor_prefix: put before the filter page's ids, to keep several runs' ids apart.

    Returns:
        An HTML fragment.
    """
    parts = [
        *_run_intro(run),
        _summary_table(run),
        *_chart_sections(run, layer_colours(run.layers)),
        *_final_filter_sections(run.records[-1]),
        *_filmstrip_sections(run, filmstrip_patterns),
        *_examples_sections(run, examples_filter),
        *_feature_vis_sections(run),
        *_filter_page_sections(run, filter_layer or run.layers[0], anchor_prefix),
    ]
    return "\n".join(parts)


def page_html(title: str, body: Sequence[str]) -> str:
    """A complete HTML page: inline style, no scripts, no external resources."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------- sections


def _run_intro(run: Run) -> list[str]:
    """The run's heading, what of its history is left out (damaged files), and a line on
    its snapshots, steps and where they lie."""
    steps, last = run.steps, run.records[-1]
    left_out = "".join(f"<li>{html.escape(problem)}</li>" for problem in run.problems)
    return [
        f"<h2>Run: {html.escape(run.label)}</h2>",
        *([f'<p class="none">Left out of this report:</p><ul class="none">{left_out}</ul>'] if left_out else []),
        f"<p>{len(steps)} snapshot{'s' if len(steps) != 1 else ''} "
        f"in <code>{html.escape(str(run.history_dir))}</code>; "
        f"steps: {html.escape(', '.join(str(step) for step in steps))}. Layers at step {last.step}:</p>",
    ]


# The health columns of the summary table: heading, signal, format of its value.
_HEALTH_COLUMNS = (
    ("effective rank", "effective_rank", "{:.2f}"),
    ("srank", "srank", "{:.0f}"),
    ("CKA to first", "cka_to_first", "{:.3f}"),
)


def _summary_table(run: Run) -> str:
    """A table of every layer at the last snapshot: filters, dead, dormant, gradient-dormant,
    mean drift and the health signals ("–" where the snapshot lacks one)."""
    last = run.records[-1]
    headings = [
        "layer", "filters", "dead", "dormant", "grad-dormant", "mean drift", *(heading for heading, _, _ in _HEALTH_COLUMNS)
    ]
    rows = ["<tr>" + "".join(f"<th>{heading}</th>" for heading in headings) + "</tr>"]
    for name in last.layers:
        cells = [
            html.escape(name),
            str(last.out_channels[name]),
            str(len(last.dead[name])) if name in last.dead else "–",
            str(len(last.dormant[name])) if name in last.dormant else "–",
            _grad_dormant_cell(last, name),
            f"{float(np.mean(last.drift[name])):.3f}" if last.drift.get(name, np.empty(0)).size else "–",
            *(_health_cell(last, signal, name, form) for _, signal, form in _HEALTH_COLUMNS),
        ]
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    return f"<table>{''.join(rows)}</table>"


def _grad_dormant_cell(record: SnapshotRecord, layer: str) -> str:
    """"2/16": the layer's gradient-dormant filters of all; "frozen" for a conv whose weight
    does not require grad; "–" where the snapshot's gradients were not read."""
    if layer in record.frozen:
        return "frozen"
    if layer in record.grad_dormant:
        return f"{len(record.grad_dormant[layer])}/{record.out_channels[layer]}"
    return "–"


def _health_cell(record: SnapshotRecord, signal: str, layer: str, form: str) -> str:
    """One health signal of ``layer`` as the table shows it; "–" where it is missing or NaN."""
    value = record.health[signal].get(layer, float("nan"))
    return form.format(value) if np.isfinite(value) else "–"


def _chart_sections(run: Run, colours: dict[str, Any]) -> list[str]:
    """The dead, dormant, drift and health charts of every layer over the steps."""
    return [
        _chart_section(
            "Dead filters",
            fraction_series(run, "dead"),
            "dead fraction",
            (0.0, 1.0),
            colours,
            "Fraction of each layer's filters that never fired on the probe for several snapshots in a row.",
            "No layer recorded dead filters (only convs followed by a ReLU-family activation do).",
        ),
        _chart_section(
            "Dormant filters",
            fraction_series(run, "dormant"),
            "dormant fraction",
            (0.0, 1.0),
            colours,
            "Fraction of each layer's filters whose mean |activation| is a tiny part of the layer's average.",
            "No layer recorded dormant filters (they need a captured activation).",
        ),
        _grad_dormant_chart_section(run, colours),
        _chart_section(
            "Filter drift",
            drift_series(run),
            "mean drift (1 - cosine)",
            # Drift spans [0, 2] but training moves filters far less: a fixed top would flatten the lines.
            (0.0, None),
            colours,
            "Mean cosine distance of each layer's filters from their first snapshot: "
            "0 kept direction, 1 orthogonal, 2 reversed.",
            "No snapshot recorded filter drift.",
        ),
        *_health_chart_sections(run, colours),
    ]


def _grad_dormant_chart_section(run: Run, colours: dict[str, Any]) -> str:
    """The gradient-dormant fraction of every layer whose gradients were read, over the steps."""
    frozen = [name for name in run.layers if any(name in record.frozen for record in run.records)]
    series = fraction_series(run, "grad_dormant")
    if frozen:
        not_drawn = f" Frozen, so not drawn (their weights do not require grad): {', '.join(frozen)}."
    else:
        not_drawn = ""
    return _chart_section(
        "Gradient-dormant filters",
        series,
        "gradient-dormant fraction",
        (0.0, 1.0),
        colours,
        "Fraction of each layer's filters whose weights got no gradient at the optimizer step before the "
        "snapshot: a mean |dL/dW| of at most grad_dormant_tau (default 0) of the layer's average (GraMa). Such a "
        "filter no longer learns, whatever its activations look like: its ReLU never fires, nothing downstream "
        "uses its channel, or its activation saturates. A fraction that grows as training goes on means the "
        "layer is losing capacity: try a lower learning rate, a leaky activation, less weight decay, or "
        "re-initializing those filters (ReDo). The first snapshot has no gradients yet." + not_drawn,
        "No snapshot recorded gradient scores (they are read from the second snapshot on; history files "
        "written before gradient dormancy lack them)." + not_drawn,
    )


# Why a health chart can have no line at all: the signals came after the history format.
_NO_HEALTH = "(history files written before the health signals lack it)"


def _health_chart_sections(run: Run, colours: dict[str, Any]) -> list[str]:
    """The effective rank, srank and CKA charts of every layer over the steps."""
    return [
        _chart_section(
            "Effective rank",
            health_series(run, "effective_rank"),
            "effective rank",
            # At most a layer's filter count, which differs by layer: a fixed top would flatten the narrow ones.
            (0.0, None),
            colours,
            "About how many directions each layer's features on the probe spread over (exp of the entropy "
            "of their normalized singular values); falling while the loss looks fine means the features "
            "collapse onto a few directions: look for dying or duplicated filters, a learning rate too high "
            "or weight decay too strong.",
            f"No snapshot recorded the effective rank {_NO_HEALTH}.",
        ),
        _chart_section(
            "srank",
            health_series(run, "srank"),
            "srank (directions holding 99%)",
            (0.0, None),
            colours,
            "The fewest singular values of each layer's probe features holding 99% of their sum, a count "
            "of the directions the layer uses out of its filters; a drop is the same collapse as a falling "
            "effective rank, counted in whole directions.",
            f"No snapshot recorded the srank {_NO_HEALTH}.",
            integer_y=True,
        ),
        _chart_section(
            "CKA to the first snapshot",
            health_series(run, "cka_to_first"),
            "linear CKA to the first",
            (0.0, 1.0),
            colours,
            "Linear CKA of each layer's probe features to the first snapshot's: 1 the same representation "
            "up to a rotation and a scale, near 0 an unrelated one; staying at 1 while its filters drift "
            "means the layer learns nothing new (check its learning rate, or whether it is frozen), a sudden "
            "fall that it was rebuilt (look for a loss spike).",
            f"No snapshot recorded the CKA to the first snapshot {_NO_HEALTH}.",
        ),
    ]


def _final_filter_sections(last: SnapshotRecord) -> list[str]:
    """Each layer's filter grid at the last snapshot, dead filters framed in red."""
    sections = []
    for name in last.layers:
        filters = last.filters[name]
        dead = last.dead.get(name, np.empty(0, dtype=np.int64))
        sections.append(
            _figure_html(
                f"Final filters: {name}",
                data_uri(encode_png(filter_grid(filters, dead))),
                f"{len(filters)} of {last.out_channels[name]} filters at step {last.step}, "
                f"each scaled to its own min..max; red frame: dead ({len(dead)}).",
                f"filters of {name}",
                pixels=True,
            )
        )
    return sections


def _chart_section(
    heading: str,
    series: dict[str, tuple[list[int], list[float]]],
    ylabel: str,
    ylim: tuple[float, Optional[float]],
    colours: dict[str, Any],
    caption: str,
    missing: str,
    integer_y: bool = False,
) -> str:
    """One chart's section, or the ``missing`` note when no layer has the series; ``integer_y``
    for a count, whose ticks are whole numbers."""
    if not series:
        return _figure_html(heading, None, missing, heading)
    png = line_chart_png(series, ylabel, ylim, colours, integer_y=integer_y)
    return _figure_html(heading, data_uri(png), caption, heading)


def _filmstrip_sections(run: Run, patterns: Optional[Sequence[str]]) -> list[str]:
    """A filmstrip section per layer matching ``patterns``, or a note when none matches."""
    layers = resolve_layer_patterns(patterns, run.layers)
    if not layers:
        wanted = ", ".join(patterns or ())
        return [_figure_html("Filmstrip", None, f"No layer of this run matches {wanted}.", "filmstrip")]
    sections = []
    for name in layers:
        rows = filmstrip_rows(run.records, name)
        steps = ", ".join(str(record.step) for record in rows)
        image = filmstrip_image(rows, name)
        sections.append(
            _figure_html(
                f"Filmstrip: {name}",
                data_uri(encode_png(image)),
                f"{name}'s filters at each snapshot, top to bottom: steps {steps}.",
                f"filmstrip of {name}",
                pixels=True,
                # Small tiles keep the PNG small; the browser doubles them, unsmoothed.
                width=FILMSTRIP_DISPLAY_SCALE * image.shape[1],
            )
        )
    return sections


def _examples_sections(run: Run, filter_index: int) -> list[str]:
    """Per layer with dataset examples: one filter's strongest validation images at each
    validation run, one row per run."""
    layers = list(dict.fromkeys(layer for record in run.examples for layer in record.patches))
    sections = []
    for layer in layers:
        records = [record for record in run.examples if layer in record.patches]
        heading = f"Dataset examples: {layer}, filter {filter_index}"
        if filter_index >= records[-1].patches[layer].shape[0]:
            count = records[-1].patches[layer].shape[0]
            sections.append(_figure_html(heading, None, f"{layer} has examples for filters 0 to {count - 1}.", heading))
            continue
        # Files from before the context windows hold smaller tiles: shown at the size of the others.
        size = max(record.patches[layer].shape[2] for record in records)
        tiles = np.stack([resize_nearest(record.patches[layer][filter_index], size, size, first_axis=1) for record in records])
        values = np.stack([record.values[layer][filter_index] for record in records])
        image = examples_history_image(tiles, values)
        first = [int(index) for index in records[-1].indices[layer][filter_index] if index >= 0]
        caption = (
            f"The validation images where filter {filter_index} of {layer} fires most, strongest first, one row per "
            f"validation run (steps {', '.join(str(record.step) for record in records)}). "
            f"Latest, by dataset index: {', '.join(map(str, first)) or 'not known (the loader was shuffled)'}."
        )
        uri, width = data_uri(encode_png(image)), EXAMPLES_DISPLAY_SCALE * image.shape[1]
        sections.append(_figure_html(heading, uri, caption, heading, pixels=True, width=width))
    return sections


def _feature_vis_sections(run: Run) -> list[str]:
    """Per layer with feature visualizations: its latest set, each filter beside the input that
    excites it most."""
    layers = list(dict.fromkeys(layer for record in run.feature_vis for layer in record.filters))
    sections = []
    for layer in layers:
        record = [record for record in run.feature_vis if layer in record.filters][-1]
        heading = f"Feature visualizations: {layer}"
        try:
            images, filters = read_feature_vis(record, layer)
        except ReportError as error:
            warnings.warn(f"{error}; they are left out", ReportWarning, stacklevel=2)
            sections.append(_figure_html(heading, None, f"{error}.", heading))
            continue
        # The file keeps the drawn part of each filter, which response_grid would pick
        # again: displayed_filters returns the same array for it (its own fixed point).
        grid = response_grid(filters, filters.shape[1] == 3, images)
        scale = FEATURE_VIS_DISPLAY_SCALE if images.shape[1] < FEATURE_VIS_OWN_SIZE else 1
        caption = (
            f"Each of the {len(images)} drawn filters of {layer} (left, scaled to its own min..max) beside its "
            f"feature visualization (right): the input optimized, from a nearly grey start, to raise the filter's mean response "
            f"through the activation (its ReLU), made with the weights of step {record.step}. It shows what the filter looks "
            "for: in a first layer, a colour or an edge of some orientation; deeper, the textures, patterns and "
            "parts it combines."
        )
        sections.append(
            _figure_html(
                heading,
                data_uri(encode_png(grid)),
                caption,
                f"feature visualizations of {layer}",
                pixels=True,
                width=scale * grid.shape[1],
            )
        )
    return sections


def _filter_page_sections(run: Run, layer: str, anchor_prefix: str) -> list[str]:
    """The filter page of ``layer``, or a note when the run lacks it (another model's run
    under the same directory)."""
    if layer not in run.layers:
        return [_figure_html("Filters", None, f"This run has no layer {layer}.", "filters")]
    return filter_page_html(run, layer, anchor_prefix)


def _figure_html(
    heading: str, image_uri: Optional[str], caption: str, alt: str, pixels: bool = False, width: Optional[int] = None
) -> str:
    """A ``<section>`` with a heading, one image (or a note when there is no data) and a caption.

    ``pixels`` images are scaled without smoothing; ``width`` sets their displayed width.
    """
    parts = [f"<h3>{html.escape(heading)}</h3>"]
    if image_uri is None:
        parts.append(f'<p class="none">{html.escape(caption)}</p>')
    else:
        css = ' class="pixels"' if pixels else ""
        size = f' width="{width}"' if width is not None else ""
        parts.append(
            f'<figure><img{css}{size} alt="{html.escape(alt)}" src="{image_uri}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return "<section>" + "".join(parts) + "</section>"
