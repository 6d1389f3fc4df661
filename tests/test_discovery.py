"""Choosing layers: every conv, by name, by pattern, and clear errors for unknown names."""

from __future__ import annotations

import pytest
from torch import nn

from lightning_filterviz.capture.conv_layers import select_conv_layers, unsupported_conv_layers
def network() -> nn.Module:
    model = nn.Module()
    model.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
    model.classifier = nn.Sequential(nn.Conv2d(4, 2, 1), nn.Flatten(), nn.Linear(2, 2))
    return model


def names(layers) -> list[str]:
    return [layer.name for layer in layers]


def test_every_conv_by_default_in_module_order():
    assert names(select_conv_layers(network())) == ["features.0", "features.2", "classifier.0"]


def test_exact_names_and_patterns():
    model = network()
    assert names(select_conv_layers(model, ["classifier.0"])) == ["classifier.0"]
    assert names(select_conv_layers(model, ["features.*"])) == ["features.0", "features.2"]
    # Order follows the model, not the request, and duplicates collapse.
    assert names(select_conv_layers(model, ["classifier.0", "features.0", "features.?"])) == [
        "features.0",
        "features.2",
        "classifier.0",
    ]


def test_unknown_name_names_it_and_suggests_close_ones():
    with pytest.raises(ValueError, match=r"'features\.1O'.*matches no module.*features\.0"):
        select_conv_layers(network(), ["features.1O"])


def test_a_name_that_is_not_a_conv_is_refused():
    with pytest.raises(ValueError, match=r"'features\.1'.*none of them is an nn.Conv2d"):
        select_conv_layers(network(), ["features.1"])


def test_compiled_submodules_are_named_without_orig_mod():
    model = network()
    model.features = nn.Module()
    model.features._orig_mod = nn.Sequential(nn.Conv2d(3, 4, 3))
    assert names(select_conv_layers(model)) == ["features.0", "classifier.0"]
    assert names(select_conv_layers(model, ["features.0"])) == ["features.0"]


def test_other_conv_kinds_are_listed_as_unsupported():
    model = nn.Sequential(nn.Conv1d(1, 1, 3), nn.Conv2d(1, 1, 3), nn.ConvTranspose2d(1, 1, 3), nn.Conv3d(1, 1, 3))
    assert unsupported_conv_layers(model) == ["0", "2", "3"]
    assert names(select_conv_layers(model)) == ["1"]
