"""TensorBoard tags: the names outside code and dashboards rely on."""

TAG_PREFIX = "filterviz"
DEAD_FILTERS_TAG = f"{TAG_PREFIX}/dead_filters"
PROBE_TAG = f"{TAG_PREFIX}/probe"
LAYERS_TAG = f"{TAG_PREFIX}/layers"


def weights_tag(layer: str) -> str:
    return f"{TAG_PREFIX}/weights/{layer}"


def activations_tag(layer: str) -> str:
    return f"{TAG_PREFIX}/activations/{layer}"


def dead_fraction_tag(layer: str) -> str:
    return f"{TAG_PREFIX}/dead_fraction/{layer}"


def dormant_fraction_tag(layer: str) -> str:
    return f"{TAG_PREFIX}/dormant_fraction/{layer}"


def drift_tag(layer: str) -> str:
    return f"{TAG_PREFIX}/drift/{layer}"


def weight_norm_tag(layer: str) -> str:
    return f"{TAG_PREFIX}/weight_norm_ratio/{layer}"


def drift_strip_tag(layer: str) -> str:
    return f"{TAG_PREFIX}/drift_strip/{layer}"


def filmstrip_tag(layer: str) -> str:
    return f"{TAG_PREFIX}/filmstrip/{layer}"


def responses_tag(layer: str) -> str:
    return f"{TAG_PREFIX}/responses/{layer}"


def through_the_layers_tag(image: int) -> str:
    return f"{TAG_PREFIX}/through_the_layers/{image}"
