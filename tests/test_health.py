"""Health signals of a layer's representation: effective rank and srank against torch's own
singular values on planted feature matrices of known rank, linear CKA on identical, rotated
and independent features, and the signals a run logs, keeps in its history and carries
through a checkpoint."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from lightning_filterviz import FilterVisualizer, Sink, load_history
from lightning_filterviz.core.records import FEATURE_POSITIONS
from lightning_filterviz.state.health import SRANK_DELTA, effective_rank, linear_cka, singular_values, srank

POSITIONS, CHANNELS = 512, 48


def planted(rank: int, seed: int = 0) -> np.ndarray:
    """Features ``(positions, channels)`` of exactly ``rank`` directions once centred."""
    generator = np.random.default_rng(seed)
    factors = generator.normal(size=(POSITIONS, rank)) @ generator.normal(size=(rank, CHANNELS))
    return (factors + generator.normal(size=(1, CHANNELS))).astype(np.float32)  # an offset centring removes


def torch_singular_values(features: np.ndarray) -> np.ndarray:
    centred = torch.from_numpy(features).double()
    return torch.linalg.svdvals(centred - centred.mean(dim=0)).numpy()


def reference_effective_rank(values: np.ndarray) -> float:
    shares = values / values.sum()
    shares = shares[shares > 0]
    return float(np.exp(-(shares * np.log(shares)).sum()))


def reference_srank(values: np.ndarray) -> int:
    total = values.sum()
    for count in range(1, len(values) + 1):
        if values[:count].sum() >= (1 - SRANK_DELTA) * total:
            return count
    raise AssertionError("unreachable")


@pytest.mark.parametrize("rank", [1, 5, CHANNELS])
def test_effective_rank_and_srank_are_those_of_the_singular_values(rank):
    features = planted(rank)
    expected = torch_singular_values(features)
    found = singular_values(features)
    np.testing.assert_allclose(found[: len(expected)], expected, rtol=0, atol=1e-6 * expected[0])
    assert effective_rank(found) == pytest.approx(reference_effective_rank(expected), rel=1e-4)
    assert srank(found) == reference_srank(expected)
    if rank < CHANNELS:  # a planted low rank is found as such
        assert srank(found) <= rank
        assert effective_rank(found) == pytest.approx(rank, rel=0.5)


def test_features_that_never_change_have_rank_zero():
    constant = np.ones((POSITIONS, CHANNELS), dtype=np.float32)
    assert effective_rank(singular_values(constant)) == 0.0 and srank(singular_values(constant)) == 0


def test_cka_is_one_for_the_same_and_rotated_features_and_near_zero_for_independent_ones():
    generator = np.random.default_rng(1)
    features = generator.normal(size=(4096, 16)).astype(np.float32)
    assert linear_cka(features, features.copy()) == 1.0  # exactly: the first snapshot against itself
    rotation, _ = np.linalg.qr(generator.normal(size=(16, 16)))
    assert linear_cka(features, features @ rotation) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(features, 3.0 * features + 7.0) == pytest.approx(1.0, abs=1e-9)
    independent = generator.normal(size=(4096, 16))
    assert linear_cka(features, independent) < 0.02


def _run(model: nn.Module, probe: torch.Tensor, steps, history_dir, change=None):
    sink = _NoSink()
    visualizer = FilterVisualizer(sink, history_dir=str(history_dir))
    snapshots = []
    for step in steps:
        snapshots.append(visualizer.snapshot(model, probe, step).result())
        if change is not None:
            change(model)
    visualizer.close()
    return visualizer, sink, snapshots


class _NoSink(Sink):
    """Scalars only, kept by step."""

    def __init__(self) -> None:
        self.scalars: dict[int, dict[str, float]] = {}

    def add_scalars(self, values, step) -> None:
        self.scalars.setdefault(step, {}).update(values)


def _conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1), nn.ReLU())


def test_a_run_judges_each_layer_on_its_probe_features_and_keeps_the_signals_in_its_history(tmp_path):
    model = _conv_net()
    probe = torch.rand(4, 3, 16, 16)

    def perturb(net: nn.Module) -> None:
        with torch.no_grad():
            net[0].weight.add_(0.3 * torch.randn_like(net[0].weight))

    _, sink, snapshots = _run(model, probe, (0, 10, 20), tmp_path, perturb)
    first = snapshots[0]
    assert set(first.health) == {"0", "2"}
    for name, health in first.health.items():
        assert health.cka_to_first == 1.0  # exactly, at the first snapshot
        features = first.layers[name].features.numpy()
        assert features.shape == (min(FEATURE_POSITIONS, 4 * 16 * 16), first.layers[name].out_channels)
        values = torch_singular_values(features)
        assert health.srank == reference_srank(values)
        assert health.effective_rank == pytest.approx(reference_effective_rank(values), rel=1e-4)
    assert snapshots[2].health["0"].cka_to_first < 1.0  # the first conv's weights moved
    for snapshot in snapshots:
        arrays = load_history(tmp_path / f"step_{snapshot.step:08d}.npz")
        logged = sink.scalars[snapshot.step]
        for name, health in snapshot.health.items():
            assert logged[f"filterviz/effective_rank/{name}"] == health.effective_rank
            assert logged[f"filterviz/srank/{name}"] == health.srank
            assert logged[f"filterviz/cka_to_first/{name}"] == health.cka_to_first
            assert float(arrays[f"{name}/effective_rank"]) == health.effective_rank
            assert int(arrays[f"{name}/srank"]) == health.srank
            assert float(arrays[f"{name}/cka_to_first"]) == health.cka_to_first


def test_the_features_are_taken_at_the_same_positions_at_every_snapshot(tmp_path):
    model = _conv_net()
    probe = torch.rand(2, 3, 40, 40)  # more positions than are kept: a subsample
    _, _, snapshots = _run(model, probe, (0, 5), tmp_path)  # the model does not change
    for name in ("0", "2"):
        np.testing.assert_array_equal(snapshots[0].layers[name].features, snapshots[1].layers[name].features)
        assert snapshots[1].health[name].cka_to_first == 1.0
    assert snapshots[0].layers["0"].features.shape[0] == FEATURE_POSITIONS


def test_a_layer_whose_probe_features_hold_nan_is_not_judged(tmp_path):
    model = _conv_net()
    probe = torch.rand(2, 3, 8, 8)
    probe[0, :, 2, 2] = float("nan")
    _, _, snapshots = _run(model, probe, (0,), tmp_path)
    assert snapshots[0].health == {}


def test_a_resumed_run_compares_with_the_first_features_of_the_run_it_resumes(tmp_path):
    model = _conv_net()
    probe = torch.rand(4, 3, 16, 16)
    before, _, snapshots = _run(model, probe, (0,), tmp_path / "a")
    buffer = io.BytesIO()
    torch.save(before.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    with torch.no_grad():
        model[0].weight.mul_(-1.0)  # trained on (here: turned around) after the checkpoint
    resumed = FilterVisualizer(_NoSink(), history_dir=str(tmp_path / "b"))
    resumed.load_state_dict(state)
    after = resumed.snapshot(model, probe, 10).result()
    fresh = FilterVisualizer(_NoSink(), history_dir=str(tmp_path / "c")).snapshot(model, probe, 10).result()
    resumed.close()
    assert fresh.health["0"].cka_to_first == 1.0  # a new run starts from here
    expected = linear_cka(
        snapshots[0].layers["0"].features.numpy().astype(np.float16).astype(np.float32),
        after.layers["0"].features.numpy(),
    )
    assert after.health["0"].cka_to_first == pytest.approx(expected, abs=1e-12)
    assert after.health["0"].cka_to_first < 1.0
