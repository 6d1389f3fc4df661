"""The tags every logger gets: the names outside code and dashboards rely on.

Per-layer tags are ``filterviz/<kind>/<layer>``, built by :func:`layer_tag` from one of
the kinds below; the others are single tags. Each view declares the tags it logs as
:class:`LoggedTag` (see :func:`lightning_filterviz.views.registry.logged_tags`): both public
docstrings list them from there, and a test holds README's table to them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ACTIVATIONS",
    "DEAD_FILTERS_TAG",
    "DEAD_FRACTION",
    "DORMANT_FRACTION",
    "DRIFT",
    "DRIFT_STRIP",
    "CKA_TO_FIRST",
    "EFFECTIVE_RANK",
    "EXAMPLES",
    "FEATURE_VIS",
    "FILMSTRIP",
    "GRAD_DORMANT_FRACTION",
    "LAYERS_TAG",
    "PROBE_TAG",
    "RESPONSES",
    "SRANK",
    "TAG_PREFIX",
    "THROUGH_THE_LAYERS",
    "WEIGHTS",
    "WEIGHT_NORM_RATIO",
    "AT_VIEWS",
    "EACH_LAYER",
    "FIRST_CONV_BY_DEFAULT",
    "LoggedTag",
    "layer_tag",
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
EFFECTIVE_RANK = "effective_rank"
SRANK = "srank"
CKA_TO_FIRST = "cka_to_first"
GRAD_DORMANT_FRACTION = "grad_dormant_fraction"
FEATURE_VIS = "feature_vis"


def layer_tag(kind: str, layer: str) -> str:
    """``filterviz/<kind>/<layer>``, e.g. ``layer_tag(WEIGHTS, "net.0")``."""
    return f"{TAG_PREFIX}/{kind}/{layer}"


@dataclass(frozen=True)
class LoggedTag:
    """One tag a view logs.

    Attributes:
        tag: the tag, with ``<layer>`` standing for each watched conv's name.
        kind: ``"image"``, ``"scalar"`` or ``"text"``.
        what: what it shows, in a few words.
    """

    tag: str
    kind: str
    what: str


# Phrases the views' tag descriptions share.
AT_VIEWS = "at the 1st, 2nd, 4th, 8th ... and every ``views_every``-th snapshot and at the end"
EACH_LAYER = "<layer>"
FIRST_CONV_BY_DEFAULT = "(the first conv by default)"
