"""The snapshot pipeline: one packed transfer, statistics before images, and probe passes
that hook the module in front of each ReLU instead of tracing every op."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conftest import FunctionalNet, conv_bn_relu_stack, count_hooks, function_modes_seen, randomize_bn
from lightning_filterviz import FilterVisualizer
from lightning_filterviz.capture.probe_capture import capture_snapshot, start_capture
from lightning_filterviz.capture.conv_layers import select_conv_layers
from lightning_filterviz.capture.transfer import TransferPacker


class SharedConvNet(nn.Module):
    """One conv applied three times (weight sharing), each time through its own BN and ReLU;
    and a conv followed by SiLU, which only the tracer follows."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.shared = nn.Conv2d(4, 4, 3, padding=1)
        self.norms = nn.ModuleList(nn.BatchNorm2d(4) for _ in range(3))
        self.smooth = nn.Conv2d(4, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem(x))
        for norm in self.norms:
            x = torch.relu(norm(self.shared(x)))
        return F.silu(self.smooth(x)).mean(dim=(2, 3))


class ReusedReluBlock(nn.Module):
    """torchvision's ResNet pattern (one in-place ReLU module after several convs, a residual
    sum), with a ReLU6 after a functional batch norm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.relu6 = nn.ReLU6(inplace=True)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        bn2 = self.bn2  # its parameters, called as a function: no module returns the ReLU6's input
        out = self.relu6(F.batch_norm(self.conv2(out), bn2.running_mean, bn2.running_var, bn2.weight, bn2.bias))
        return self.relu(out + out.mean())


class ReadAgainBlock(nn.Module):
    """An in-place ReLU6 after a BN; a BN output read again after its ReLU (a skip from
    before the activation); and one read, before its in-place ReLU, by a call that returns
    no tensor (``min(dim)`` gives a tuple): a hook on a BN must change none of them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu6 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU6(inplace=True)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv3, self.bn3, self.relu = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu6(self.bn1(self.conv1(x)))
        normalized = self.bn2(self.conv2(out))
        out = F.relu(normalized) - normalized
        normalized = self.bn3(self.conv3(out))
        lowest, _ = normalized.min(dim=1, keepdim=True)
        return self.relu(normalized) + lowest


MODELS = {
    "sequential": lambda: conv_bn_relu_stack(inplace=True),
    "read again": ReadAgainBlock,
    "functional": FunctionalNet,
    "shared conv": SharedConvNet,
    "reused relu": ReusedReluBlock,
}


@pytest.mark.parametrize("name", list(MODELS))
def test_a_planned_probe_pass_gives_exactly_what_tracing_gives(name):
    model = randomize_bn(MODELS[name]())
    layers = select_conv_layers(model)
    probe = torch.randn(3, 3, 12, 12)
    peaks = [layer.name for layer in layers]
    traced = start_capture(model, probe, layers, 0, peak_layers=peaks, max_images=3)
    assert traced.plan is not None
    planned = start_capture(model, probe, layers, 1, peak_layers=peaks, max_images=3, plan=traced.plan)
    assert planned.plan is traced.plan
    first, second = traced.ship().wait(), planned.ship().wait()
    for layer in first.layers:
        a, b = first.layers[layer], second.layers[layer]
        assert (a.activation, a.zeroing, a.no_activation_reason) == (b.activation, b.zeroing, b.no_activation_reason)
        for field in ("weight", "channel_max", "channel_mean_abs", "maps", "peak_index"):
            expected, got = getattr(a, field), getattr(b, field)
            assert (expected is None) == (got is None), (layer, field)
            if expected is not None:
                assert torch.equal(expected, got), (layer, field)


def test_taps_are_the_modules_in_front_of_each_relu():
    model = ReusedReluBlock()
    plan = start_capture(model, torch.randn(2, 3, 8, 8), select_conv_layers(model), 0).plan
    assert {name: tap.module for name, tap in plan.taps.items()} == {"conv1": model.bn1}
    assert plan.traced == ["conv2"]  # a functional batch norm before its ReLU6: only the tracer follows
    shared = SharedConvNet()
    plan = start_capture(shared, torch.randn(2, 3, 8, 8), select_conv_layers(shared), 0).plan
    # The shared conv's ReLUs follow three different BNs: no single module to hook.
    assert plan.taps["stem"].module is shared.stem and plan.traced == ["shared", "smooth"]


def test_a_planned_probe_pass_leaves_what_the_model_computes_as_it_was():
    model = randomize_bn(ReadAgainBlock()).eval()
    layers = select_conv_layers(model)
    probe = torch.randn(2, 3, 8, 8) * 3  # beyond ReLU6's ceiling too
    plan = start_capture(model, probe, layers, 0).plan
    taps = {name: tap.module for name, tap in plan.taps.items()}
    assert taps == {"conv1": model.bn1, "conv2": model.bn2, "conv3": model.bn3}
    with torch.no_grad():
        expected = model(probe)
    outputs = []
    snapshot = start_capture(
        model, probe, layers, 1, plan=plan, forward_fn=lambda net, x: outputs.append(net(x))
    ).ship().wait()
    assert torch.equal(outputs[0], expected)
    with torch.no_grad():
        first = model.bn1(model.conv1(probe)).clamp(0, 6)
    torch.testing.assert_close(snapshot.layers["conv1"].channel_max, first.amax(dim=(0, 2, 3)))


def test_later_snapshots_of_a_relu_model_trace_no_op(tmp_path):
    model = conv_bn_relu_stack(inplace=True)
    modes = function_modes_seen(model)  # a tracer intercepts every torch call of the forward it runs in
    visualizer = FilterVisualizer(str(tmp_path))
    visualizer.snapshot(model, torch.randn(2, 3, 8, 8), 0)
    assert any(modes)  # the first pass traces, to find the activations
    modes.clear()
    hooks = count_hooks(model)
    visualizer.snapshot(model, torch.randn(2, 3, 8, 8), 1)
    with visualizer.training_batch(model):
        model(torch.randn(2, 3, 8, 8))
    assert len(modes) >= 2 and not any(modes) and count_hooks(model) == hooks


def test_a_conv_called_three_times_weighs_each_call_the_same():
    model = randomize_bn(SharedConvNet()).eval()
    probe = torch.randn(2, 3, 8, 8)
    snapshot = capture_snapshot(model, probe, select_conv_layers(model), 0)
    with torch.no_grad():
        x, means, maxima = F.relu(model.stem(probe)), [], []
        for norm in model.norms:
            x = torch.relu(norm(model.shared(x)))
            means.append(x.abs().mean(dim=(0, 2, 3)))
            maxima.append(x.amax(dim=(0, 2, 3)))
    torch.testing.assert_close(snapshot.layers["shared"].channel_mean_abs, torch.stack(means).mean(dim=0))
    torch.testing.assert_close(snapshot.layers["shared"].channel_max, torch.stack(maxima).amax(dim=0))


def test_training_batches_watched_through_the_bn_tap_save_a_filter_from_death(tmp_path):
    model = conv_bn_relu_stack()
    with torch.no_grad():
        model[0].weight[4].fill_(0.1)
        model[0].bias[4] = 0.0
        model[1].bias[4] = -3.0  # channel 4 fires only where the input is large
    visualizer = FilterVisualizer(str(tmp_path), dead_patience=1)
    quiet = torch.zeros(2, 3, 8, 8)
    visualizer.snapshot(model, quiet, 0)
    assert 4 in visualizer.dead_filters["0"]
    model.train()
    model[1].eval()  # a frozen BatchNorm, as in fine-tuning
    with visualizer.training_batch(model):
        model(torch.full((2, 3, 8, 8), 50.0))
    visualizer.snapshot(model, quiet, 1)
    assert 4 not in visualizer.dead_filters["0"]
    visualizer.snapshot(model, quiet, 2)  # no training batch watched since: off again
    assert 4 in visualizer.dead_filters["0"]


def test_statistics_are_ready_while_the_images_are_still_being_written(tmp_path):
    release = threading.Event()
    writing = threading.Event()

    class SlowSink:
        def add_image(self, tag, image, step):
            writing.set()
            release.wait(10)

        def add_scalar(self, tag, value, step):
            pass

        def add_text(self, tag, text, step):
            pass

        def flush(self):
            pass

    model = conv_bn_relu_stack()
    with torch.no_grad():
        model[3].bias[1] = -1e4
    visualizer = FilterVisualizer(SlowSink(), dead_patience=1, background=True)
    visualizer.snapshot(model, torch.randn(2, 3, 8, 8), 0)
    assert writing.wait(10)  # the writer is stuck in the sink ...
    assert visualizer.dead_filters == {"0": [], "3": [1]}  # ... and the statistics are there
    assert 1 not in visualizer.dormant_filters.get("0", [])
    release.set()
    visualizer.close()


@pytest.mark.parametrize("pack_cpu", [True, False], ids=["packed as for a GPU", "copied one by one"])
def test_every_shipped_tensor_comes_back_exactly(pack_cpu):
    class Holder:
        pass

    holder = Holder()
    values = {
        "odd": torch.randn(3),
        "index": torch.tensor([2**40 + 1, -7, 2**24 + 1]),  # int64 beyond float32's exact range
        "channels_last": torch.randn(5, 3, 2, 4).contiguous(memory_format=torch.channels_last),
        "half": torch.randn(4, 4).half(),
        "bfloat16": torch.randn(3, 5).bfloat16(),
        "double": torch.randn(3).double(),
        "empty": torch.empty(0),
        "sliced": torch.randn(8, 3, 3, 3)[:5],
        "channels_last_cropped": torch.randn(4, 6, 3, 3).contiguous(memory_format=torch.channels_last)[1:3, :4],
        "channels_last_offset": torch.randn(4, 6, 3, 3).contiguous(memory_format=torch.channels_last)[1:3],
        "strided": torch.randn(10)[::3],
        "small_index": torch.tensor([5, 0, -1]),  # as float32 bits these would be denormals
        "weight": torch.nn.Parameter(torch.randn(6, 2))[:4],  # still requires grad, autograd on
    }
    packer = TransferPacker(pack_cpu=pack_cpu)
    for field, tensor in values.items():
        packer.add(holder, field, tensor)
    host = packer.ship()
    host.wait()
    for owner, field, tensor in host.views():
        setattr(owner, field, tensor)
    for field, tensor in values.items():
        got = getattr(holder, field)
        expected = tensor if tensor.dtype == torch.int64 else tensor.float()
        assert got.dtype == expected.dtype and got.shape == expected.shape and torch.equal(got, expected), field
        assert not got.requires_grad, field
        if tensor.numel():  # (an empty tensor has no memory to share)
            assert got.untyped_storage().data_ptr() != tensor.untyped_storage().data_ptr(), field  # a copy
    with pytest.raises(TypeError, match="pack floating-point or int64"):
        packer.add(holder, "mask", torch.ones(3, dtype=torch.bool))


def test_packing_concatenates_each_dtype_once_into_its_own_dtype():
    """On a GPU, a concatenation of contiguous tensors into their own dtype is one kernel;
    with a tensor of another dtype among them it is one copy per tensor."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Concatenations(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[tuple[str, list[Tensor], Tensor]] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            kwargs = kwargs or {}
            if func.overloadpacket.__name__ in ("cat", "copy_", "_to_copy"):
                self.calls.append((func.overloadpacket.__name__, list(args[0]) if args else [], kwargs.get("out")))
            return func(*args, **kwargs)

    weight = torch.randn(8, 3, 3, 3).contiguous(memory_format=torch.channels_last)
    tensors = [weight, torch.randn(8), torch.randn(2, 8, 4, 4).half(), torch.randn(8).half(), torch.arange(8)]
    packer = TransferPacker(pack_cpu=True)
    for index, tensor in enumerate(tensors):
        packer.add(index, "value", tensor)
    with Concatenations() as dispatched:
        host = packer.ship()
    assert [name for name, _, _ in dispatched.calls] == ["cat"] * 3  # int64, float32, float16; no copies
    for _, inputs, out in dispatched.calls:
        assert all(tensor.dtype == out.dtype and tensor.is_contiguous() for tensor in inputs)
    host.wait()
    for index, _, value in sorted(host.views(), key=lambda view: view[0]):
        expected = tensors[index] if tensors[index].dtype == torch.int64 else tensors[index].float()
        assert value.dtype == expected.dtype and torch.equal(value, expected)


def test_a_snapshot_keeps_no_view_of_the_live_weights():
    model = conv_bn_relu_stack()
    snapshot = capture_snapshot(model, torch.randn(2, 3, 8, 8), select_conv_layers(model), 0)
    before = snapshot.layers["0"].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)  # what the optimizer does after the snapshot
    assert torch.equal(snapshot.layers["0"].weight, before)
