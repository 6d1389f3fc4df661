"""TensorBoard tags: the names outside code and dashboards rely on.

Per-layer tags are ``filterviz/<kind>/<layer>``, built by :func:`layer_tag` from one of
the kinds below; the others are single tags.
"""

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
    "PROBE_TAG",
    "RESPONSES",
    "TAG_PREFIX",
    "THROUGH_THE_LAYERS",
    "WEIGHTS",
    "WEIGHT_NORM_RATIO",
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


def layer_tag(kind: str, layer: str) -> str:
    """``filterviz/<kind>/<layer>``, e.g. ``layer_tag(WEIGHTS, "net.0")``."""
    return f"{TAG_PREFIX}/{kind}/{layer}"
