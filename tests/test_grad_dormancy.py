"""Gradient dormancy (GraMa): filters whose weights get no gradient are found exactly, under
plain float32, mixed precision and gradient accumulation; the scores the history keeps are
those of the gradients the optimizer applied; a frozen conv is reported frozen, not dormant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from lightning_filterviz import FilterVisualizer, Sink, load_history
from lightning_filterviz.core.history import history_dir_of, history_files

from conftest import Classifier, FilterMonitor, RandomImages, pl, read_events, trainer_kwargs

# The filters of the first conv whose output nothing downstream uses: their weights get no gradient.
SILENCED = [2, 5]


class SilencedChannels(nn.Module):
    """Multiplies the chosen channels by zero, so that no gradient reaches their filters."""

    def __init__(self, channels: int, silenced: list[int]) -> None:
        super().__init__()
        mask = torch.ones(1, channels, 1, 1)
        mask[:, silenced] = 0
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.mask


def silenced_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        SilencedChannels(8, SILENCED),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


class GradientsSeen(pl.Callback):
    """What the optimizer applies at each step: each conv weight's per-filter mean |grad|."""

    def __init__(self) -> None:
        self.seen: dict[int, dict[str, Tensor]] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.seen[trainer.global_step + 1] = {
            name: module.weight.grad.abs().flatten(1).mean(dim=1).clone()
            for name, module in pl_module.named_modules()
            if isinstance(module, nn.Conv2d) and module.weight.grad is not None
        }


def _fit(tmp_path: Path, model: pl.LightningModule, monitor: FilterMonitor, **overrides) -> GradientsSeen:
    seen = GradientsSeen()
    kwargs = trainer_kwargs(tmp_path, max_epochs=1, callbacks=[monitor, seen], **overrides)
    pl.seed_everything(0)
    pl.Trainer(**kwargs).fit(model, datamodule=RandomImages(train=32, batch_size=4))
    return seen


def _history(tmp_path: Path) -> list[dict[str, np.ndarray]]:
    return [load_history(path) for path in history_files(history_dir_of(Path(tmp_path, "tb", "version_0")))]


@pytest.mark.parametrize(
    "overrides",
    [{}, {"precision": "bf16-mixed"}, {"precision": "16-mixed"}, {"accumulate_grad_batches": 4}],
    ids=["float32", "bf16-mixed", "16-mixed", "accumulate-4"],
)
def test_filters_without_gradient_are_found_exactly(tmp_path, overrides):
    monitor = FilterMonitor(every_n_steps=2, examples_layers=[])
    _fit(tmp_path, Classifier(silenced_net(), lr=0.1), monitor, **overrides)
    assert monitor.grad_dormant_filters == {"net.0": SILENCED, "net.3": []}
    snapshots = [arrays for arrays in _history(tmp_path) if "net.0/grad_scores" in arrays]
    assert snapshots, "no snapshot judged the gradients"
    for arrays in snapshots:
        assert arrays["net.0/grad_dormant"].tolist() == SILENCED
        scores = arrays["net.0/grad_scores"]
        assert (scores[SILENCED] == 0).all() and (np.delete(scores, SILENCED) > 0.05).all()


def test_the_scores_are_those_of_the_gradients_the_optimizer_applied(tmp_path):
    monitor = FilterMonitor(every_n_steps=3, examples_layers=[], grad_dormant_tau=0.5)
    seen = _fit(tmp_path, Classifier(silenced_net(), lr=0.1), monitor)
    histories = {int(arrays["step"]): arrays for arrays in _history(tmp_path)}
    assert "net.0/grad_scores" not in histories[0]  # before the first step there is no gradient
    judged = [step for step, arrays in histories.items() if "net.0/grad_scores" in arrays]
    assert judged == [3, 6, 8]  # the cadence's steps, and the last step of the fit (8 batches)
    events = read_events(Path(tmp_path, "tb", "version_0"))
    fractions = events.scalars["filterviz/grad_dormant_fraction/net.3"]
    for step in judged:
        for name in ("net.0", "net.3"):
            magnitudes = seen.seen[step][name]
            expected = (magnitudes / magnitudes.mean()).numpy()
            np.testing.assert_allclose(histories[step][f"{name}/grad_scores"], expected, rtol=1e-5, atol=1e-7)
        expected_dormant = np.flatnonzero(histories[step]["net.3/grad_scores"] <= 0.5)
        assert histories[step]["net.3/grad_dormant"].tolist() == expected_dormant.tolist()
        assert fractions[step] == pytest.approx(len(expected_dormant) / 8)
    assert 0 not in fractions


def test_a_frozen_conv_is_reported_frozen_not_gradient_dormant(tmp_path):
    net = silenced_net()
    net[0].requires_grad_(False)
    monitor = FilterMonitor(every_n_steps=2, examples_layers=[])
    _fit(tmp_path, Classifier(net), monitor)
    assert monitor.grad_dormant_filters == {"net.3": []}
    last = _history(tmp_path)[-1]
    assert bool(last["net.0/frozen"]) and "net.0/grad_scores" not in last and "net.3/frozen" not in last
    events = read_events(Path(tmp_path, "tb", "version_0"))
    assert "filterviz/grad_dormant_fraction/net.0" not in events.scalars
    assert "filterviz/grad_dormant_fraction/net.3" in events.scalars


class _NoSink(Sink):
    def log_images(self, images, step):
        pass

    def log_scalars(self, scalars, step):
        pass


def test_the_engine_reads_gradients_where_it_is_told_and_an_overflowed_step_is_not_judged():
    torch.manual_seed(0)
    net = silenced_net()
    probe = torch.randn(4, 3, 12, 12)
    visualizer = FilterVisualizer(_NoSink())
    net(probe).sum().backward()
    visualizer.read_gradients(net)
    visualizer.snapshot(net, probe, 1)
    assert visualizer.grad_dormant_filters == {"0": SILENCED, "3": []}
    # Gradients that overflowed (an fp16 step the scaler skips) say nothing: the verdict stands.
    net[3].weight.grad[0] = float("inf")
    visualizer.read_gradients(net)
    snapshot = visualizer.snapshot(net, probe, 2).result()
    assert "3" not in snapshot.grad_scores and "0" in snapshot.grad_scores
    assert visualizer.grad_dormant_filters == {"0": SILENCED, "3": []}
    # A snapshot without a read of the gradients judges none.
    assert not visualizer.snapshot(net, probe, 3).result().grad_scores


def test_a_negative_threshold_is_refused():
    with pytest.raises(ValueError, match="grad_dormant_tau"):
        FilterMonitor(grad_dormant_tau=-0.1)
