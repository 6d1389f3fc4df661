"""Dead filters: the threshold, the patience, and what resets a streak."""

from __future__ import annotations

import torch

from lightning_filterviz.core.records import CapturedSnapshot, LayerCapture
from lightning_filterviz.state.stats import DeadFilterTracker


def snapshot(step: int, channel_max: list[float], zeroing: bool = True) -> CapturedSnapshot:
    layer = LayerCapture(
        "conv",
        len(channel_max),
        torch.zeros(len(channel_max), 1, 1, 1),
        activation="relu" if zeroing else "silu",
        zeroing=zeroing,
        channel_max=torch.tensor(channel_max),
    )
    return CapturedSnapshot(step, {"conv": layer})


def test_dead_after_patience_consecutive_off_snapshots():
    tracker = DeadFilterTracker(threshold=0.0, patience=2)
    tracker.update(snapshot(0, [0.0, 1.0, 0.0]))
    assert tracker.dead_filters == {"conv": []}
    tracker.update(snapshot(1, [0.0, 0.0, 0.5]))
    assert tracker.dead_filters == {"conv": [0]}
    assert tracker.dead_fraction("conv") == 1 / 3
    tracker.update(snapshot(2, [0.3, 0.0, 0.0]))  # filter 0 fired again: no longer dead
    assert tracker.dead_filters == {"conv": [1]}


def test_threshold_counts_small_values_as_off():
    tracker = DeadFilterTracker(threshold=0.1, patience=1)
    tracker.update(snapshot(0, [0.1, 0.11, -1.0]))
    assert tracker.dead_filters == {"conv": [0, 2]}


def test_layers_without_a_relu_family_activation_are_not_judged():
    tracker = DeadFilterTracker(patience=1)
    tracker.update(snapshot(0, [0.0, 0.0], zeroing=False))
    assert tracker.dead_filters == {}


def test_state_round_trip_keeps_counting():
    tracker = DeadFilterTracker(patience=3)
    tracker.update(snapshot(0, [0.0, 1.0]))
    tracker.update(snapshot(1, [0.0, 1.0]))
    restored = DeadFilterTracker(patience=3)
    restored.load_state_dict(tracker.state_dict())
    restored.update(snapshot(2, [0.0, 1.0]))
    assert restored.dead_filters == {"conv": [0]}
