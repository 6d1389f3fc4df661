"""TensorBoard tags: the names outside code and dashboards rely on, and what each shows.

Per-layer tags are ``filterviz/<kind>/<layer>``, built by :func:`layer_tag` from one of
the kinds below; the others are single tags. :data:`LOGGED_TAGS` describes them once:
both public docstrings list them from there, and a test holds README's table to it.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

from lightning_filterviz.core.arguments import WIDTH

__all__ = [
    "ACTIVATIONS",
    "DEAD_FILTERS_TAG",
    "DEAD_FRACTION",
    "DORMANT_FRACTION",
    "DRIFT",
    "DRIFT_STRIP",
    "EXAMPLES",
    "FILMSTRIP",
    "LAYERS_TAG",
    "LOGGED_TAGS",
    "PROBE_TAG",
    "RESPONSES",
    "TAG_PREFIX",
    "THROUGH_THE_LAYERS",
    "WEIGHTS",
    "WEIGHT_NORM_RATIO",
    "LoggedTag",
    "layer_tag",
    "with_logged_tags",
]

TAG_PREFIX = "filterviz"
DEAD_FILTERS_TAG = f"{TAG_PREFIX}/dead_filters"
PROBE_TAG = f"{TAG_PREFIX}/probe"
LAYERS_TAG = f"{TAG_PREFIX}/layers"

WEIGHTS = "weights"
ACTIVATIONS = "activations"
DEAD_FRACTION = "dead_fraction"
DORMANT_FRACTION = "dormant_fraction"
DRIFT = "drift"
WEIGHT_NORM_RATIO = "weight_norm_ratio"
DRIFT_STRIP = "drift_strip"
FILMSTRIP = "filmstrip"
RESPONSES = "responses"
EXAMPLES = "examples"
THROUGH_THE_LAYERS = "through_the_layers"  # keyed by probe image index, not by layer


def layer_tag(kind: str, layer: str) -> str:
    """``filterviz/<kind>/<layer>``, e.g. ``layer_tag(WEIGHTS, "net.0")``."""
    return f"{TAG_PREFIX}/{kind}/{layer}"


@dataclass(frozen=True)
class LoggedTag:
    """One thing a snapshot (or a validation run) logs.

    Attributes:
        tag: the tag, with ``<layer>`` standing for each watched conv's name.
        kind: ``"image"``, ``"scalar"`` or ``"text"``.
        what: what it shows, in a few words.
    """

    tag: str
    kind: str
    what: str


_VIEWS = "at the first and every ``views_every``-th snapshot"

_EACH_LAYER = "<layer>"
_FIRST_CONV = "(the first conv by default)"

LOGGED_TAGS: tuple[LoggedTag, ...] = (
    LoggedTag(layer_tag(WEIGHTS, _EACH_LAYER), "image", "the layer's filters, normalized"),
    LoggedTag(layer_tag(ACTIVATIONS, _EACH_LAYER), "image", "the feature maps of the conv's activation on the probe"),
    LoggedTag(layer_tag(DEAD_FRACTION, _EACH_LAYER), "scalar", "dead filters / all filters (ReLU-family activations)"),
    LoggedTag(layer_tag(DORMANT_FRACTION, _EACH_LAYER), "scalar", "dormant filters / all filters"),
    LoggedTag(
        layer_tag(DRIFT, _EACH_LAYER), "scalar", "mean cosine distance of the filters from their initial weights"
    ),
    LoggedTag(layer_tag(WEIGHT_NORM_RATIO, _EACH_LAYER), "scalar", "mean filter norm over its initial value"),
    LoggedTag(
        layer_tag(DRIFT_STRIP, _EACH_LAYER), "image", f"drift and norm ratio per filter, {_VIEWS} and at the end"
    ),
    LoggedTag(
        layer_tag(FILMSTRIP, _EACH_LAYER), "image", f"the filters at every snapshot so far {_FIRST_CONV}, {_VIEWS}"
    ),
    LoggedTag(
        layer_tag(RESPONSES, _EACH_LAYER),
        "image",
        f"each drawn filter beside the probe patch it peaks on {_FIRST_CONV}, {_VIEWS}",
    ),
    LoggedTag(
        layer_tag(EXAMPLES, _EACH_LAYER),
        "image",
        f"the dataset examples each drawn filter fires on most {_FIRST_CONV}, written by "
        "``publish_dataset_examples`` (the monitor: at each validation run of ``fit``)",
    ),
    LoggedTag(
        f"{TAG_PREFIX}/{THROUGH_THE_LAYERS}/<i>",
        "image",
        f"probe image ``i`` as every watched layer sees it (its busiest channels), {_VIEWS}",
    ),
    LoggedTag(DEAD_FILTERS_TAG, "text", "a table of layer -> dead filter indices"),
    LoggedTag(LAYERS_TAG, "text", "each watched conv and the activation it maps to, once"),
    LoggedTag(PROBE_TAG, "image", "the probe images, once"),
)


def with_logged_tags(docstring: str) -> str:
    """``docstring`` with its line ``<logged tags>`` replaced by a list of :data:`LOGGED_TAGS`,
    indented like that line.

    Raises:
        ValueError: if ``docstring`` has no such line.
    """
    found = re.search(r"^( *)<logged tags>$", docstring, flags=re.MULTILINE)
    if found is None:
        raise ValueError("The docstring has no `<logged tags>` line to list the tags at.")
    indent = found.group(1)
    entries = [f"- ``{each.tag}`` ({each.kind}): {each.what}" for each in LOGGED_TAGS]
    text = ",\n".join(_wrapped(entry, indent) for entry in entries) + "."
    return docstring[: found.start()] + text + docstring[found.end() :]


def _wrapped(entry: str, indent: str) -> str:
    lines = textwrap.wrap(
        entry,
        width=WIDTH,  # as the Args sections are
        initial_indent=indent,
        subsequent_indent=indent + "  ",
        break_long_words=False,
        break_on_hyphens=False,
    )
    return "\n".join(lines)
