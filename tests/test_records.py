"""The records a snapshot becomes are frozen: what a caller gets never changes afterwards."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from conftest import conv_bn_relu_stack
from lightning_filterviz import FilterVisualizer
from lightning_filterviz.core.records import LayerCapture, Snapshot
from lightning_filterviz.engine.delivery import PendingSnapshot


def dead_conv_model() -> torch.nn.Module:
    model = conv_bn_relu_stack()
    with torch.no_grad():
        model[3].bias[0] = -1e4  # filter 0 of the second conv never fires: its verdict changes over snapshots
    return model


def contents(value: Any) -> Any:
    """A deep copy of a record's values, with tensors as arrays, to compare later."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {each.name: contents(getattr(value, each.name)) for each in dataclasses.fields(value)}
    if isinstance(value, torch.Tensor):
        return value.numpy().copy()
    if isinstance(value, np.ndarray):
        return value.copy()
    if hasattr(value, "items"):
        return {key: contents(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [contents(item) for item in value]
    return value


def assert_same(now: Any, before: Any) -> None:
    if isinstance(before, dict):
        assert now.keys() == before.keys()
        for key in before:
            assert_same(now[key], before[key])
    elif isinstance(before, list):
        assert len(now) == len(before)
        for a, b in zip(now, before):
            assert_same(a, b)
    elif isinstance(before, np.ndarray):
        np.testing.assert_array_equal(now, before)
    else:
        assert now == before


@pytest.mark.parametrize("background", [False, True], ids=["at once", "in the background"])
def test_a_returned_snapshot_never_changes_afterwards(tmp_path, background):
    model = dead_conv_model()
    visualizer = FilterVisualizer(str(tmp_path), background=background, dead_patience=1, filmstrip_layers=["*"])
    returned = visualizer.snapshot(model, torch.randn(2, 3, 8, 8), 0)
    assert isinstance(returned, PendingSnapshot if background else Snapshot)
    first = returned.result()
    kept = contents(first)
    assert kept["dead_filters"] == {"0": [], "3": [0]} and kept["layers"]["0"]["maps"] is not None
    for step in range(1, 4):
        with torch.no_grad():
            model[3].bias[0] = 0.0 if step == 2 else -1e4  # the filter comes back to life, then dies again
            for parameter in model.parameters():
                parameter.add_(0.1)
        visualizer.snapshot(model, torch.randn(2, 3, 8, 8), step)
    visualizer.finish(3)
    visualizer.close()
    assert_same(contents(first), kept)
    assert returned.result() is first


def test_a_snapshot_refuses_every_assignment(tmp_path):
    snapshot = FilterVisualizer(str(tmp_path)).snapshot(dead_conv_model(), torch.randn(2, 3, 8, 8), 0).result()
    layer = snapshot.layers["0"]
    assert isinstance(layer, LayerCapture)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.step = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.weight = torch.zeros(1)  # type: ignore[misc]
    for mapping in (snapshot.layers, snapshot.dead_filters, snapshot.drift, snapshot.receptive_fields):
        with pytest.raises(TypeError):
            mapping["0"] = None  # type: ignore[index]
    with pytest.raises(AttributeError):
        snapshot.dead_filters.pop("3")  # type: ignore[attr-defined]
    assert isinstance(snapshot.dead_filters["3"], tuple)  # the indices cannot be appended to either


def test_a_background_snapshot_is_complete_when_its_result_returns(tmp_path):
    model = dead_conv_model()
    visualizer = FilterVisualizer(str(tmp_path), background=True, dead_patience=1)
    pending = visualizer.snapshot(model, torch.randn(2, 3, 8, 8), 0)
    assert isinstance(pending, PendingSnapshot) and pending.step == 0
    snapshot = pending.result(timeout=60)
    assert pending.done()
    # Verdicts and arrived tensors alike are there at once, without a flush.
    assert snapshot.dead_filters == {"0": (), "3": (0,)} and set(snapshot.drift) == {"0", "3"}
    assert all(layer.channel_mean_abs is not None and layer.weight.is_contiguous() for layer in snapshot.layers.values())
    visualizer.close()
