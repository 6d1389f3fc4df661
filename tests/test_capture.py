"""One probe pass: the activation the model really computes, and nothing left behind."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from conftest import FunctionalNet, conv_bn_relu_stack, count_hooks, randomize_bn
from lightning_filterviz.core.records import Snapshot
from lightning_filterviz.capture.probe_capture import capture_snapshot, start_capture
from lightning_filterviz.capture.conv_layers import select_conv_layers
from lightning_filterviz.core.history import history_arrays


def residual_block() -> BasicBlock:
    """torchvision's ResNet block: one in-place ReLU module called after its first conv's BN
    and after the residual sum ``out += downsample(x)`` (a 1x1 conv here)."""
    return BasicBlock(3, 4, downsample=nn.Conv2d(3, 4, 1))


def capture(model: nn.Module, inputs: Tensor, **kwargs):
    return capture_snapshot(model, inputs, select_conv_layers(model), step=0, max_images=8, **kwargs)


@pytest.mark.parametrize("inplace", [False, True])
def test_sequential_activation_is_relu_after_bn(inplace):
    model = conv_bn_relu_stack(inplace=inplace)
    randomize_bn(model)
    inputs = torch.randn(5, 3, 10, 10)
    snapshot = capture(model, inputs)
    model.eval()
    with torch.no_grad():
        first = F.relu(model[1](model[0](inputs)))
        second = F.relu(model[3](first))
    assert snapshot.layers["0"].activation == "relu" and snapshot.layers["0"].zeroing
    assert torch.allclose(snapshot.layers["0"].maps, first)
    assert torch.allclose(snapshot.layers["3"].maps, second)
    assert torch.allclose(snapshot.layers["0"].channel_max, first.amax(dim=(0, 2, 3)))
    assert torch.allclose(snapshot.layers["3"].channel_mean_abs, second.abs().mean(dim=(0, 2, 3)))


def test_a_conv_without_activation_gets_its_mean_magnitude_and_no_maximum():
    model = randomize_bn(residual_block())
    inputs = torch.randn(4, 3, 8, 8)
    layers = select_conv_layers(model)
    traced = start_capture(model, inputs, layers, 0, max_images=4)
    planned = start_capture(model, inputs, layers, 1, max_images=4, plan=traced.plan)
    model.eval()
    with torch.no_grad():
        before_sum = model.bn2(model.conv2(F.relu(model.bn1(model.conv1(inputs)))))
    for snapshot in (traced.ship().wait(), planned.ship().wait()):  # traced, then through a plan
        residual = snapshot.layers["conv2"]
        assert residual.pre_activation and residual.channel_max is None
        torch.testing.assert_close(residual.channel_mean_abs, before_sum.abs().mean(dim=(0, 2, 3)))
        assert snapshot.layers["conv1"].channel_max is not None
        arrays = history_arrays(Snapshot(snapshot.step, layers=snapshot.layers))
        assert "conv2/channel_mean_abs" in arrays and "conv2/channel_max" not in arrays
        assert "conv1/channel_max" in arrays


def test_functional_relu_in_forward_is_found():
    model = FunctionalNet()
    randomize_bn(model)
    inputs = torch.randn(4, 3, 9, 9)
    snapshot = capture(model, inputs)
    model.eval()
    with torch.no_grad():
        first = F.relu(model.bn1(model.conv1(inputs)))
        second = F.relu(model.conv2(first))
    assert torch.allclose(snapshot.layers["conv1"].maps, first)
    assert torch.allclose(snapshot.layers["conv2"].maps, second)


def test_reused_inplace_relu_maps_to_each_conv_and_residual_convs_have_none():
    model = randomize_bn(residual_block())
    inputs = torch.randn(3, 3, 8, 8)
    snapshot = capture(model, inputs)
    model.eval()
    with torch.no_grad():
        first = F.relu(model.bn1(model.conv1(inputs)))
    assert torch.allclose(snapshot.layers["conv1"].maps, first)
    # conv2 -> bn2 meets the residual sum before the shared ReLU: no activation of its own.
    assert snapshot.layers["conv2"].activation is None
    assert "add" in snapshot.layers["conv2"].no_activation_reason
    assert snapshot.layers["downsample"].activation is None


def test_non_relu_activation_is_recorded_but_not_zeroing():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.SiLU(), nn.Conv2d(4, 4, 3), nn.ReLU6())
    snapshot = capture(model, torch.randn(2, 3, 8, 8))
    assert (snapshot.layers["0"].activation, snapshot.layers["0"].zeroing) == ("silu", False)
    assert (snapshot.layers["3"].activation, snapshot.layers["3"].zeroing) == ("hardtanh", True)


def test_captured_tensors_are_small_detached_cpu_copies():
    model = conv_bn_relu_stack()
    snapshot = capture_snapshot(
        model, torch.randn(8, 3, 100, 100), select_conv_layers(model), 0, max_filters=4, max_images=2, max_map_size=20
    )
    layer = snapshot.layers["0"]
    assert layer.weight.shape == (4, 3, 3, 3)
    assert layer.maps.shape == (2, 4, 20, 20)
    assert layer.channel_max.shape == (6,)  # statistics cover every filter
    for tensor in (layer.weight, layer.maps, layer.channel_max):
        assert not tensor.requires_grad and tensor.device.type == "cpu" and tensor.dtype == torch.float32


@pytest.mark.parametrize(("height", "width", "max_size"), [(100, 100, 20), (64, 64, 48), (50, 31, 48), (7, 5, 3)])
def test_large_feature_maps_are_area_downsampled(height, width, max_size):
    model = conv_bn_relu_stack().eval()
    probe = torch.randn(3, 3, height, width)
    snapshot = capture_snapshot(model, probe, select_conv_layers(model), 0, max_images=2, max_map_size=max_size)
    scale = max_size / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    with torch.no_grad():
        first, second = model[:3](probe), model[:5](probe)
    # Each pixel the mean of the input pixels its window covers, as F.interpolate's "area" mode.
    for name, activation in (("0", first), ("3", second)):
        expected = F.interpolate(activation[:2], size=size, mode="area")
        torch.testing.assert_close(snapshot.layers[name].maps, expected, rtol=1e-5, atol=1e-6)


def test_no_hook_left_after_a_snapshot_or_an_exception_inside_one():
    model = conv_bn_relu_stack(inplace=True)
    model.register_forward_hook(lambda *args: None)  # the user's own hook must stay
    before = count_hooks(model)
    capture(model, torch.randn(2, 3, 8, 8))
    assert count_hooks(model) == before

    def failing_forward(module: nn.Module, inputs: Tensor) -> Tensor:
        module[0](inputs)  # the tracking hook fires
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        capture(model, torch.randn(2, 3, 8, 8), forward_fn=failing_forward)
    assert count_hooks(model) == before
    # The tracing mode is gone too: a plain op after the failure is not intercepted.
    assert torch.relu(torch.tensor([-1.0])).item() == 0.0
    assert not torch.overrides.has_torch_function((torch.tensor(1.0),))


def test_modes_and_rng_are_restored():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(4, 4, 3))
    model.train()
    model[1].eval()  # a user's frozen BatchNorm stays frozen
    modes = [module.training for module in model.modules()]
    running_mean = model[1].running_mean.clone()
    inputs = torch.randn(2, 3, 8, 8)
    rng = torch.get_rng_state()
    capture(model, inputs)
    assert [module.training for module in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(model[1].running_mean, running_mean)


def test_every_module_runs_in_eval_mode_and_a_model_with_its_own_eval_or_train_is_asked():
    class FreezesItsStem(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
            self.asked: list[bool] = []

        def train(self, mode: bool = True) -> "FreezesItsStem":
            self.asked.append(mode)
            super().train(mode)
            self.stem.eval()
            return self

        def forward(self, x: Tensor) -> Tensor:
            return self.stem(x)

    class CountsItsEval(nn.Sequential):
        evals = 0

        def eval(self) -> "CountsItsEval":
            self.evals += 1
            return super().eval()

    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3)).train()
    overriding = nn.Sequential(FreezesItsStem(), nn.ReLU(), nn.Conv2d(4, 4, 3)).train()
    own_eval = CountsItsEval(nn.Conv2d(3, 4, 3), nn.ReLU()).train()
    for model in (plain, overriding, own_eval):
        before = [module.training for module in model.modules()]
        during: list[bool] = []
        note_mode = lambda module, args, output: during.append(module.training)  # noqa: E731
        handles = [module.register_forward_hook(note_mode) for module in model.modules()]
        capture(model, torch.randn(2, 3, 8, 8))
        for handle in handles:
            handle.remove()
        assert during and not any(during)
        assert [module.training for module in model.modules()] == before
    assert overriding[0].asked == [True, False]  # its own train() decided the eval mode
    assert own_eval.evals == 1


def test_a_torchscript_block_is_back_in_training_mode_after_each_snapshot():
    # A scripted module keeps its training flag in C++: the forward reads that one.
    block = torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    model = nn.Sequential(block, nn.Conv2d(4, 4, 3)).train()
    inputs = torch.randn(2, 3, 8, 8)
    for _ in range(2):
        capture(model, inputs)
        assert block.training and block._c.getattr("training")
        running_mean = block[1].running_mean.clone()
        model(inputs)  # a training forward updates the running statistics
        assert not torch.equal(block[1].running_mean, running_mean)


def test_probe_pass_runs_without_autograd():
    model = conv_bn_relu_stack()
    seen: list[bool] = []
    model[0].register_forward_hook(lambda module, args, output: seen.append(output.requires_grad))
    capture(model, torch.randn(2, 3, 8, 8))
    assert seen == [False]
