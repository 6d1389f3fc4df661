"""A conv's activation is found through pooling, resampling and padding, through fused convs
and activation checkpointing; convs inside TorchScript modules are named, not skipped silently.

Ground truth comes from running the model ourselves with forward hooks on the real
activation modules (or from a fused conv's own output, which is its ReLU's)."""

from __future__ import annotations

import warnings
from typing import Callable

import pytest
import torch
import torch.ao.nn.intrinsic.qat as fused_qat
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn
from torch.ao.quantization import get_default_qat_qconfig

from lightning_filterviz import FilterVisualizer
from lightning_filterviz.capture.conv_layers import select_conv_layers
from lightning_filterviz.capture.hook_guard import HookGuard
from lightning_filterviz.capture.probe_capture import start_capture
from lightning_filterviz.capture.receptive_fields import receptive_field
from lightning_filterviz.capture.tracking import track_training_batch
from lightning_filterviz.core.layer_table import layer_table
from lightning_filterviz.core.records import ReceptiveField
from lightning_filterviz.state.stats import dormant_indices

TAU = 0.025


# ---------------------------------------------------------------- models and planted filters


class Between(nn.Module):
    """conv1 -> ``between`` -> ReLU module -> conv2 -> ReLU module: the ReLUs are modules so
    that hooks on them see the real activations."""

    def __init__(self, between: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        self.act2 = nn.ReLU()
        self.between = between

    def forward(self, x: Tensor) -> Tensor:
        return self.act2(self.conv2(self.act1(self.between(self.conv1(x))))).mean(dim=(2, 3))


class MnistNet(nn.Module):
    """The old PyTorch MNIST example's pattern: ``F.relu(F.max_pool2d(conv(x), 2))``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3)
        self.conv2 = nn.Conv2d(6, 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        return F.relu(F.max_pool2d(self.conv2(x), 2)).mean(dim=(2, 3))


def plant(conv: nn.Conv2d) -> None:
    """Filter 0 dead (zero weights, bias -1); filter 1 reads channel 0 of the input alone
    (positive on the checkerboard's bright squares, negative on its dark ones, see
    :func:`probe`), so whether it dies depends on the op between the conv and its ReLU (an
    average pool of 2x2 dims every window; a max pool keeps the bright square); filter 2
    dormant (zero weights, bias 1e-4: never zero, far below the others)."""
    with torch.no_grad():
        conv.weight[0] = 0.0
        conv.bias[0] = -1.0
        conv.weight[1] = 0.0
        conv.weight[1, 0, 1, 1] = 1.0
        conv.bias[1] = 0.0
        conv.weight[2] = 0.0
        conv.bias[2] = 1e-4


def probe(size: int = 12) -> Tensor:
    """Two images whose channel 0 is a checkerboard of +1 and -3 (every 2x2 window averages -1)."""
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images[:, 0] = torch.where((rows + cols) % 2 == 0, 1.0, -3.0)
    return images


def hooked_activations(model: nn.Module, modules: dict[str, nn.Module], x: Tensor) -> dict[str, Tensor]:
    """conv name -> what the module named for it returned, on ``x`` in eval mode."""
    seen: dict[str, Tensor] = {}
    handles = [
        module.register_forward_hook(lambda _m, _a, out, name=name: seen.setdefault(name, out.detach().clone()))
        for name, module in modules.items()
    ]
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def dead(activation: Tensor) -> tuple[int, ...]:
    return tuple(torch.nonzero(activation.amax(dim=(0, 2, 3)) <= 0).flatten().tolist())


def dormant(activation: Tensor) -> tuple[int, ...]:
    return tuple(dormant_indices(activation.abs().mean(dim=(0, 2, 3)), TAU))


def take_snapshot(model: nn.Module, x: Tensor, tmp_path, **options) -> object:
    visualizer = FilterVisualizer(str(tmp_path), dead_patience=1, dormant_tau=TAU, **options)
    try:
        return visualizer.snapshot(model, x, 1)
    finally:
        visualizer.close()


def table_rows(snapshot) -> dict[str, tuple[str, ...]]:
    return {row[0]: row for row in layer_table(snapshot).rows}


# ---------------------------------------------------------------- pooling and friends

BETWEEN: dict[str, tuple[Callable[[], Callable[[Tensor], Tensor]], str]] = {
    "F.max_pool2d": (lambda: lambda t: F.max_pool2d(t, 2), "max_pool2d"),
    "nn.MaxPool2d": (lambda: nn.MaxPool2d(2), "max_pool2d"),
    "max_pool2d with indices": (lambda: lambda t: F.max_pool2d(t, 2, return_indices=True)[0], "max_pool2d"),
    "F.avg_pool2d": (lambda: lambda t: F.avg_pool2d(t, 2), "avg_pool2d"),
    "nn.AdaptiveAvgPool2d": (lambda: nn.AdaptiveAvgPool2d(4), "adaptive_avg_pool2d"),
    "nn.AdaptiveMaxPool2d": (lambda: nn.AdaptiveMaxPool2d(3), "adaptive_max_pool2d"),
    "nn.Upsample bilinear": (lambda: nn.Upsample(scale_factor=2, mode="bilinear"), "interpolate"),
    "F.interpolate nearest": (lambda: lambda t: F.interpolate(t, scale_factor=0.5), "interpolate"),
    "nn.ReflectionPad2d": (lambda: nn.ReflectionPad2d(1), "pad"),
    "nn.ZeroPad2d": (lambda: nn.ZeroPad2d(2), "pad"),
    "F.pad fill -1": (lambda: lambda t: F.pad(t, (1, 1, 1, 1), value=-1.0), "pad"),
    "eval dropout then max pool": (lambda: nn.Sequential(nn.Dropout2d(0.5), nn.MaxPool2d(2)), "max_pool2d"),
}


@pytest.mark.parametrize("between", list(BETWEEN))
def test_dead_and_dormant_are_exact_through_pooling_resampling_and_padding(between, tmp_path):
    make, followed = BETWEEN[between]
    torch.manual_seed(0)
    model = Between(make())
    plant(model.conv1)
    x = probe()
    snapshot = take_snapshot(model, x, tmp_path)

    truth = hooked_activations(model, {"conv1": model.act1, "conv2": model.act2}, x)
    assert dict(snapshot.dead_filters) == {name: dead(act) for name, act in truth.items()}
    assert dict(snapshot.dormant_filters) == {name: dormant(act) for name, act in truth.items()}
    assert 0 in snapshot.dead_filters["conv1"] and 2 in snapshot.dormant_filters["conv1"]
    # The statistics are the activation's, after the op: its size, its mean.
    layer = snapshot.layers["conv1"]
    assert torch.equal(layer.channel_max, truth["conv1"].amax(dim=(0, 2, 3)))
    assert torch.allclose(layer.channel_mean_abs, truth["conv1"].mean(dim=(0, 2, 3)))
    assert layer.maps.shape[-2:] == truth["conv1"].shape[-2:]
    assert table_rows(snapshot)["conv1"][2:4] == (f"relu (through {followed})", "yes")


def test_an_average_pool_kills_a_filter_a_max_pool_keeps(tmp_path):
    """Filter 1 is positive on every bright square of the probe: a 2x2 max pool keeps it alive,
    a 2x2 average pool leaves every window at -1, so its ReLU output is exactly zero."""
    x = probe()
    verdicts = {}
    for pool in (nn.MaxPool2d(2), nn.AvgPool2d(2)):
        torch.manual_seed(0)
        model = Between(pool)
        plant(model.conv1)
        verdicts[type(pool).__name__] = take_snapshot(model, x, tmp_path / type(pool).__name__).dead_filters["conv1"]
    assert 1 not in verdicts["MaxPool2d"] and 0 in verdicts["MaxPool2d"]
    assert 1 in verdicts["AvgPool2d"] and 0 in verdicts["AvgPool2d"]


def test_the_mnist_example_pattern_is_followed_and_exact(tmp_path):
    torch.manual_seed(0)
    model = MnistNet()
    plant(model.conv1)
    with torch.no_grad():
        model.conv2.bias[3] = -1e4
    x = probe(16)
    snapshot = take_snapshot(model, x, tmp_path)

    with torch.no_grad():
        first = F.relu(F.max_pool2d(model.conv1(x), 2))
        second = F.relu(F.max_pool2d(model.conv2(first), 2))
    assert dict(snapshot.dead_filters) == {"conv1": dead(first), "conv2": dead(second)}
    assert dict(snapshot.dormant_filters) == {"conv1": dormant(first), "conv2": dormant(second)}
    assert 0 in snapshot.dead_filters["conv1"] and 3 in snapshot.dead_filters["conv2"]
    rows = table_rows(snapshot)
    # No module returns the pooled tensor: only the tracer can watch training batches for it.
    assert rows["conv1"][2:5] == ("relu (through max_pool2d)", "yes", "tracer")


def test_a_padding_that_fills_above_zero_is_not_followed(tmp_path):
    """A fill of 1 makes the ReLU fire where the conv produced nothing: not the conv's activation."""
    torch.manual_seed(0)
    model = Between(lambda t: F.pad(t, (1, 1, 1, 1), value=1.0))
    plant(model.conv1)
    snapshot = take_snapshot(model, probe(), tmp_path)
    assert "conv1" not in snapshot.dead_filters and "conv2" in snapshot.dead_filters
    conv, _, activation, judged, _, _ = table_rows(snapshot)["conv1"]
    assert judged == "no" and "`pad` with the fill value 1" in activation


@pytest.mark.parametrize("functional", [False, True])
def test_training_batches_are_watched_at_the_pooled_activation(functional):
    """A hook on the pool module (it returns exactly what the ReLU takes), or the tracer where
    no module returns it: either way the maxima are the real activation's."""
    torch.manual_seed(0)
    model = Between(lambda t: F.max_pool2d(t, 2)) if functional else Between(nn.MaxPool2d(2))
    plant(model.conv1)
    layers = select_conv_layers(model)
    x = probe()
    plan = start_capture(model, x, layers, 0).plan
    assert plan is not None
    if functional:
        assert "conv1" not in plan.taps and "conv1" in plan.zeroing
    else:
        assert plan.taps["conv1"].module is model.between
    batch = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    maxima: dict[str, Tensor] = {}
    guard = HookGuard()
    model.train()
    with track_training_batch(layers, plan, 0.0, maxima, guard), torch.no_grad():
        model(batch)
    assert not guard.failed
    truth = hooked_activations(model, {"conv1": model.act1, "conv2": model.act2}, batch)
    for name, activation in truth.items():
        assert torch.equal(maxima[name].clamp(min=0), activation.amax(dim=(0, 2, 3)))


# ---------------------------------------------------------------- peak patches and dataset examples


def test_the_receptive_field_is_the_pooled_activations(tmp_path):
    """3x3 conv then a 2x2 max pool: each pooled position sees 4x4 pixels, 2 apart; the peak
    recorded is a position of the pooled activation."""
    torch.manual_seed(0)
    model = MnistNet()
    x = probe(24)
    assert receptive_field(model, x, model.conv1) == ReceptiveField(size=(4, 4), stride=(2, 2), offset=(0, 0))
    assert receptive_field(model, x, model.conv2) == ReceptiveField(size=(10, 10), stride=(4, 4), offset=(0, 0))
    snapshot = take_snapshot(model, x, tmp_path, response_layers=["conv1"], views_every=1, log_weights=False)
    layer = snapshot.layers["conv1"]
    assert layer.output_hw == (11, 11)  # 24 - 2 = 22, pooled to 11
    with torch.no_grad():
        pooled = F.relu(F.max_pool2d(model.conv1(x), 2))
    expected_peaks = pooled.transpose(0, 1).reshape(pooled.shape[1], -1).argmax(dim=1)
    assert torch.equal(layer.peak_index, expected_peaks)
    assert snapshot.receptive_fields["conv1"] == ReceptiveField(size=(4, 4), stride=(2, 2), offset=(0, 0))


def test_dataset_examples_are_the_pooled_activations_patches(tmp_path):
    torch.manual_seed(0)
    model = Between(nn.MaxPool2d(2))
    visualizer = FilterVisualizer(str(tmp_path), examples_layers=["conv1"], response_layers=[], examples_k=1)
    images = torch.randn(5, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    visualizer.snapshot(model, images[:2], 0)
    collector = visualizer.dataset_examples_pass(model)
    assert collector is not None
    field = collector.layers["conv1"][1]
    assert field == ReceptiveField(size=(4, 4), stride=(2, 2), offset=(-1, -1))  # padding 1
    model.eval()
    with collector.collecting(), torch.no_grad():
        collector.next_batch(images, torch.arange(5))
        model(images)
    examples = collector.results()["conv1"]
    visualizer.close()

    activation = hooked_activations(model, {"conv1": model.act1}, images)["conv1"]  # (5, 6, 6, 6)
    padded = F.pad(images, (1, 1, 1, 1), value=float("nan"))
    for channel in range(6):
        strongest = activation[:, channel].flatten(1).amax(dim=1)
        image = int(strongest.argmax())
        assert int(examples.indices[channel, 0]) == image
        assert examples.values[channel, 0] == strongest[image]
        y, x = divmod(int(activation[image, channel].flatten().argmax()), 6)
        top, left = -1 + 2 * y, -1 + 2 * x  # in input pixels; +1 in the padded image
        crop = padded[image, :, top + 1 : top + 5, left + 1 : left + 5]
        # The example's context window holds the whole 12x12 image; the field lies in it at its box.
        box_top, box_left, height, width = examples.boxes[channel, 0].tolist()
        assert (height, width) == (4, 4)
        field_pixels = examples.patches[channel, 0][:, box_top : box_top + 4, box_left : box_left + 4]
        assert torch.equal(field_pixels.isnan(), crop.isnan())
        assert torch.equal(field_pixels.nan_to_num(), crop.nan_to_num())
        assert int(examples.patches[channel, 0].isfinite().all(dim=0).sum()) == 12 * 12


# ---------------------------------------------------------------- activation checkpointing


class Checkpointed(nn.Module):
    def __init__(self, use_reentrant: bool | None) -> None:
        super().__init__()
        self.use_reentrant = use_reentrant
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem(x))
        if self.use_reentrant is not None:
            x = torch.utils.checkpoint.checkpoint(self.block, x, use_reentrant=self.use_reentrant)
        else:
            x = self.block(x)
        return x.mean(dim=(2, 3))


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_convs_inside_activation_checkpointing_get_their_fields(use_reentrant, tmp_path):
    torch.manual_seed(0)
    model = Checkpointed(use_reentrant)
    plain = Checkpointed(None)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    original = torch.utils.checkpoint.CheckpointFunction
    for conv in ("block.0", "block.3"):
        expected = receptive_field(plain, x, plain.get_submodule(conv))
        assert receptive_field(model, x, model.get_submodule(conv)) == expected
    assert torch.utils.checkpoint.CheckpointFunction is original  # put back
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "does not depend on the input" would fail here
        warnings.filterwarnings("ignore", "None of the inputs have requires_grad")  # torch's, under no_grad
        snapshot = take_snapshot(model, x, tmp_path, response_layers=["block.*"], views_every=1, log_weights=False)
    assert set(snapshot.receptive_fields) == {"block.0", "block.3"}
    # Checkpointing still works in training after the measurement: gradients match the plain model's.
    model.train(), plain.train()
    model(x).sum().backward()
    plain(x).sum().backward()
    assert torch.allclose(model.block[0].weight.grad, plain.block[0].weight.grad)


def test_autograd_switched_off_inside_the_forward_is_named_as_the_reason():
    class NoGradStem(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3)
            self.conv = nn.Conv2d(4, 4, 3)

        def forward(self, x: Tensor) -> Tensor:
            with torch.no_grad():
                x = F.relu(self.stem(x))
            return F.relu(self.conv(x))

    model = NoGradStem()
    with pytest.raises(ValueError, match=r"'stem' runs with autograd switched off inside the model's forward"):
        receptive_field(model, torch.randn(1, 3, 16, 16), model.stem)


# ---------------------------------------------------------------- fused and scripted convs


class QatFused(nn.Module):
    """What ``prepare_qat`` makes of fused conv-BN-ReLU, conv-ReLU and conv-BN modules."""

    def __init__(self) -> None:
        super().__init__()
        qconfig = get_default_qat_qconfig("fbgemm")
        self.a = fused_qat.ConvBnReLU2d(3, 6, 3, padding=1, qconfig=qconfig)
        self.b = fused_qat.ConvReLU2d(6, 5, 3, padding=1, qconfig=qconfig)
        self.c = fused_qat.ConvBn2d(5, 4, 3, padding=1, qconfig=qconfig)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.c(self.b(self.a(x)))).mean(dim=(2, 3))


def test_fused_convs_with_their_own_relu_are_judged_dead(tmp_path):
    torch.manual_seed(0)
    model = QatFused()
    with torch.no_grad():
        model.a.bn.bias[1] = -1e4  # planted: conv-BN-ReLU filter 1 dead (a zero BN scale would divide by zero)
        model.b.weight[3] = 0.0
        model.b.bias[3] = -1.0  # planted: conv-ReLU filter 3 dead
    x = probe()
    snapshot = take_snapshot(model, x, tmp_path)
    truth = hooked_activations(model, {"a": model.a, "b": model.b, "c": model.act}, x)
    assert dict(snapshot.dead_filters) == {name: dead(act) for name, act in truth.items()}
    assert dict(snapshot.dormant_filters) == {name: dormant(act) for name, act in truth.items()}
    assert 1 in snapshot.dead_filters["a"] and 3 in snapshot.dead_filters["b"]
    rows = table_rows(snapshot)
    assert rows["a"][2:5] == ("relu (inside the fused ConvBnReLU2d module)", "yes", "hook on `a`")
    assert rows["b"][2:5] == ("relu (inside the fused ConvReLU2d module)", "yes", "hook on `b`")
    assert rows["c"][2:4] == ("relu", "yes")  # ConvBn2d has no ReLU of its own: the one after it


def test_scripted_convs_are_named_in_one_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated in recent torch
        scripted = torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()))
    model = nn.Sequential(scripted, nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
    visualizer = FilterVisualizer(str(tmp_path))
    with pytest.warns(UserWarning, match=r"1 conv layer\(s\) inside TorchScript modules .*\['0\.0'\]") as caught:
        visualizer.snapshot(model, torch.randn(2, 3, 8, 8), 0)
        visualizer.snapshot(model, torch.randn(2, 3, 8, 8), 1)
    assert sum("TorchScript" in str(warning.message) for warning in caught) == 1
    visualizer.close()
    with pytest.raises(ValueError, match=r"'0\.0'.*inside a TorchScript module"):
        select_conv_layers(model, ["0.0"])
