"""Dead and dormant verdicts are exact on the ways people really write CNNs."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from conftest import (
    Classifier,
    FilterMonitor,
    FunctionalNet,
    RandomImages,
    conv_bn_relu_stack,
    function_modes_seen,
    pl,
    read_events,
    trainer_kwargs,
)
from lightning_filterviz import FilterVisualizer
from lightning_filterviz.state.stats import dormant_indices, dormant_scores


class ReusedReluNet(nn.Module):
    """torchvision-ResNet style: one in-place ReLU module called after every stage."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


class InceptionStyleNet(nn.Module):
    """torchvision-Inception style: BasicConv2d blocks with F.relu(..., inplace=True) after BN."""

    class BasicConv2d(nn.Module):
        def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
            super().__init__()
            self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
            self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

        def forward(self, x: Tensor) -> Tensor:
            return F.relu(self.bn(self.conv(x)), inplace=True)

    def __init__(self) -> None:
        super().__init__()
        self.stem = self.BasicConv2d(3, 6, kernel_size=3, padding=1)
        self.branch1 = self.BasicConv2d(6, 4, kernel_size=1)
        self.branch3 = self.BasicConv2d(6, 4, kernel_size=3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = torch.cat([self.branch1(x), self.branch3(x)], dim=1)
        return self.head(x.mean(dim=(2, 3)))


def sequential_reference(net: nn.Sequential, x: Tensor) -> dict[str, Tensor]:
    first = F.relu(net[1](net[0](x)))
    return {"net.0": first, "net.3": F.relu(net[3](first))}


def two_conv_reference(net: FunctionalNet | ReusedReluNet, x: Tensor) -> dict[str, Tensor]:
    """conv1 -> bn1 -> ReLU, then conv2 -> ReLU: FunctionalNet's and ReusedReluNet's activations."""
    first = F.relu(net.bn1(net.conv1(x)))
    return {"net.conv1": first, "net.conv2": F.relu(net.conv2(first))}


def inception_reference(net: InceptionStyleNet, x: Tensor) -> dict[str, Tensor]:
    def block(module: InceptionStyleNet.BasicConv2d, inputs: Tensor) -> Tensor:
        return F.relu(module.bn(module.conv(inputs)))

    stem = block(net.stem, x)
    return {"net.stem.conv": stem, "net.branch1.conv": block(net.branch1, stem), "net.branch3.conv": block(net.branch3, stem)}


def plant_bn(bn: nn.BatchNorm2d, channel: int) -> None:
    bn.weight.data[channel] = 0.0
    bn.bias.data[channel] = -1e4


def plant_bias(conv: nn.Conv2d, channel: int) -> None:
    conv.bias.data[channel] = -1e4


# name -> (build, plant, reference, planted channels)
ARCHITECTURES: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module], None], Callable, dict]] = {
    "sequential": (
        conv_bn_relu_stack,
        lambda net: (plant_bn(net[1], 2), plant_bias(net[3], 5)),
        sequential_reference,
        {"net.0": 2, "net.3": 5},
    ),
    "sequential-inplace": (
        lambda: conv_bn_relu_stack(inplace=True),
        lambda net: (plant_bn(net[1], 0), plant_bias(net[3], 7)),
        sequential_reference,
        {"net.0": 0, "net.3": 7},
    ),
    "functional": (
        FunctionalNet,
        lambda net: (plant_bn(net.bn1, 4), plant_bias(net.conv2, 1)),
        two_conv_reference,
        {"net.conv1": 4, "net.conv2": 1},
    ),
    "reused-relu": (
        ReusedReluNet,
        lambda net: (plant_bn(net.bn1, 3), plant_bias(net.conv2, 6)),
        two_conv_reference,
        {"net.conv1": 3, "net.conv2": 6},
    ),
    "inception-style": (
        InceptionStyleNet,
        lambda net: (plant_bn(net.stem.bn, 1), plant_bn(net.branch3.bn, 2)),
        inception_reference,
        {"net.stem.conv": 1, "net.branch3.conv": 2},
    ),
}


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_planted_dead_channels_are_reported_exactly(architecture, tmp_path):
    build, plant, reference, planted = ARCHITECTURES[architecture]
    net = build()
    with torch.no_grad():
        plant(net)
    model = Classifier(net, lr=0.01)
    monitor = FilterMonitor(every_n_steps=2, dead_patience=1)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(model, datamodule=RandomImages())

    # The reference: the same probe at the final weights (the last snapshot is at the last step).
    net.eval()
    with torch.no_grad():
        activations = reference(net, monitor.probe[0])
    expected = {name: torch.nonzero(act.amax(dim=(0, 2, 3)) <= 0).flatten().tolist() for name, act in activations.items()}
    assert monitor.dead_filters == expected
    assert all(channel in expected[name] for name, channel in planted.items())

    last = read_events(trainer.logger.log_dir)
    for name, indices in expected.items():
        assert last.scalars[f"filterviz/dead_fraction/{name}"][4] == pytest.approx(len(indices) / activations[name].shape[1])
    assert monitor.dormant_filters == {
        name: dormant_indices(act.abs().mean(dim=(0, 2, 3)), 0.025) for name, act in activations.items()
    }


def redo_reference(activation: Tensor, tau: float) -> tuple[Tensor, list[int]]:
    """ReDo (Sokar et al. 2023), written out: s_c = mean|h_c| / (1/C sum_k mean|h_k|)."""
    per_channel = [activation[:, channel].abs().mean().item() for channel in range(activation.shape[1])]
    layer_average = sum(per_channel) / len(per_channel)
    scores = [value / layer_average if layer_average > 0 else 0.0 for value in per_channel]
    return torch.tensor(scores), [channel for channel, score in enumerate(scores) if score <= tau]


@pytest.mark.parametrize(
    "activation",
    [
        torch.tensor([[[[1.0, -1.0]], [[0.0, 0.0]], [[3.0, 3.0]], [[0.05, 0.0]]]]),
        torch.zeros(2, 3, 2, 2),  # a layer where every channel is zero: all dormant
        torch.randn(4, 8, 5, 5, generator=torch.Generator().manual_seed(3)),
    ],
)
def test_dormant_scores_match_the_redo_formula(activation):
    mean_abs = activation.abs().mean(dim=(0, 2, 3))
    expected_scores, expected_dormant = redo_reference(activation, tau=0.1)
    assert torch.allclose(dormant_scores(mean_abs), expected_scores.float(), atol=1e-6)
    assert dormant_indices(mean_abs, 0.1) == expected_dormant


def test_non_relu_activations_get_dormant_but_not_dead(tmp_path):
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.SiLU(), nn.Conv2d(6, 4, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )
    with torch.no_grad():
        net[0].weight[2] = 0.0
        net[0].bias[2] = 0.0  # SiLU(0) = 0: dormant, and never "dead"
    model = Classifier(net, lr=0.0)
    monitor = FilterMonitor(every_n_steps=2)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(model, datamodule=RandomImages())
    assert "net.0" not in monitor.dead_filters and "net.2" in monitor.dead_filters
    assert 2 in monitor.dormant_filters["net.0"]
    events = read_events(trainer.logger.log_dir)
    assert "filterviz/dead_fraction/net.0" not in events.scalars
    assert events.scalars["filterviz/dormant_fraction/net.0"][0] >= 1 / 6
    table = events.texts["filterviz/layers"][0]
    assert "| net.0 | 6 | silu | no | - |" in table and "| net.2 | 4 | relu | yes | hook on `net.2` |" in table


class GatedConv(nn.Module):
    """Channel 0 fires only on bright inputs (sum of the patch above 50), never on a dark probe."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.copy_(torch.tensor([-50.0, -1e4]))  # channel 1 is dead everywhere
        self.head = nn.Linear(2, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.conv(x)).mean(dim=(2, 3)))


class BrightTraining(RandomImages):
    def __init__(self) -> None:
        super().__init__()
        self.train_set.tensors[0][::4] = 20.0  # every fourth training image is bright


@pytest.mark.parametrize("track", [False, True])
def test_a_filter_that_fires_on_training_data_is_not_dead_with_tracking(track, tmp_path):
    model = Classifier(GatedConv(), lr=0.0)
    monitor = FilterMonitor(every_n_steps=2, probe=torch.zeros(4, 3, 12, 12), track_training_batches=track)
    pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1)).fit(model, datamodule=BrightTraining())
    assert monitor.dead_filters == {"net.conv": [1] if track else [0, 1]}


def test_training_batch_tracking_is_refused_for_compiled_models(tmp_path):
    model = Classifier()
    model.net = torch.compile(model.net, backend="eager")
    monitor = FilterMonitor(every_n_steps=2, track_training_batches=True)
    with pytest.warns(UserWarning, match="`track_training_batches` is off"):
        pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1)).fit(model, datamodule=RandomImages())
    assert monitor.dead_filters.keys() == {"net.0", "net.3"}


def _relu6_stack() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU6(), nn.Flatten(), nn.LazyLinear(2))


def _silu_then_relu_stack() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.SiLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.LazyLinear(2),
    )


@pytest.mark.parametrize(
    ("make_model", "threshold", "traced"),
    [
        # Every ReLU conv has a tap; the convs feeding a residual sum have no activation of their own.
        (lambda: torchvision.models.resnet18(num_classes=4), 0.0, False),
        # ReLU6 clips at 6: whether it fired above 6 cannot be read off its input's maximum.
        (_relu6_stack, 6.0, True),
        # SiLU never stays at zero: nothing about its conv is judged dead, so it is not watched.
        (_silu_then_relu_stack, 0.0, False),
    ],
)
def test_tracking_traces_only_the_relu_convs_no_hook_can_decide(make_model, threshold, traced, tmp_path):
    model, probe = make_model(), torch.randn(2, 3, 32, 32)
    visualizer = FilterVisualizer(str(tmp_path), dead_threshold=threshold)
    visualizer.snapshot(model, probe, 0)
    modes = function_modes_seen(model)
    model.train()
    with visualizer.training_batch(model):
        model(torch.randn(2, 3, 32, 32))
    assert len(modes) == 1 and bool(modes[0]) == traced  # a tracer intercepts every torch call of the forward
    snapshot = visualizer.snapshot(model, probe, 1)
    judged = {name for name, layer in snapshot.layers.items() if layer.zeroing}
    assert judged and {name for name, layer in snapshot.layers.items() if layer.training_max is not None} == judged
