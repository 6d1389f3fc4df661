"""Feature visualization (lightning_filterviz.capture.feature_visualization): planted filters
show what they detect, the model is left exactly as it was, and bad arguments fail clearly."""

from __future__ import annotations

import random
from typing import Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_filterviz.capture import feature_visualization
from lightning_filterviz.capture.feature_visualization import visualize_filters

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
SIZE = 32


def _normalized_probe(count: int = 8, size: int = SIZE, seed: int = 0) -> Tensor:
    """Random RGB images in [0, 1], normalized as a torchvision ImageNet transform would."""
    images = torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return (images - IMAGENET_MEAN) / IMAGENET_STD


def _colour_model(batch_norm: bool) -> nn.Sequential:
    """A first-layer conv whose channel 0 is a red detector and channel 1 a green one."""
    conv = nn.Conv2d(3, 2, 3, padding=1)
    with torch.no_grad():
        conv.weight.fill_(-0.5)
        conv.weight[0, 0] = 1.0  # +1 on R, -0.5 on G and B, at every position
        conv.weight[1, 1] = 1.0  # +1 on G, -0.5 on R and B
        conv.bias.zero_()
    layers: list[nn.Module] = [conv]
    if batch_norm:
        norm = nn.BatchNorm2d(2)
        with torch.no_grad():  # statistics as training would leave them: not an identity
            norm.running_mean.copy_(torch.tensor([0.3, -0.2]))
            norm.running_var.copy_(torch.tensor([4.0, 0.5]))
            norm.weight.copy_(torch.tensor([1.5, 0.7]))
            norm.bias.copy_(torch.tensor([0.1, -0.1]))
        layers.append(norm)
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _mean_colours(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float64).mean(axis=(1, 2)) / 255.0


@pytest.mark.parametrize("batch_norm", [False, True], ids=["conv", "conv-bn"])
def test_colour_detectors_show_their_colour(batch_norm: bool) -> None:
    model = _colour_model(batch_norm)
    tap = model[1] if batch_norm else model[0]
    # The default 256 steps: the rectified objective also rewards contrast, and the colour
    # takes longer to win than with a plain mean.
    images = visualize_filters(model, tap, [0, 1], _normalized_probe())
    red, green = _mean_colours(images)
    assert red[0] - max(red[1], red[2]) > 0.2, f"red detector's image has mean colour {red}"
    assert green[1] - max(green[0], green[2]) > 0.2, f"green detector's image has mean colour {green}"


def _edge_conv() -> nn.Conv2d:
    """Channel 0: a vertical-edge detector ([-1, 0, 1] across columns); channel 1: horizontal."""
    edges = nn.Conv2d(3, 2, 5, padding=2, bias=False)
    with torch.no_grad():
        edges.weight.zero_()
        edges.weight[0, :, :, 1], edges.weight[0, :, :, 3] = -1.0, 1.0
        edges.weight[1, :, 1, :], edges.weight[1, :, 3, :] = -1.0, 1.0
    return edges


def _orientation_model(readout_layer: bool) -> tuple[nn.Sequential, nn.Module, Optional[nn.Module]]:
    """The edge detectors as a first layer (the model, the tap and the conv), or read by a
    1 x 1 conv after their ReLU. A first layer's filter is linear: the plain mean of its response
    only sees the image's border, and only the rectified mean fills the image with edges."""
    edges = _edge_conv()
    if not readout_layer:
        return nn.Sequential(edges, nn.ReLU()), edges, edges
    readout = nn.Conv2d(2, 2, 1, bias=False)
    with torch.no_grad():
        readout.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
    return nn.Sequential(edges, nn.ReLU(), readout, nn.ReLU()), readout, None


def _horizontal_over_vertical_gradient(image: np.ndarray) -> float:
    """Energy of the grey image's gradient along x over that along y."""
    grey = image.astype(np.float64).mean(axis=-1) / 255.0
    along_x = (np.diff(grey, axis=1) ** 2).sum()
    along_y = (np.diff(grey, axis=0) ** 2).sum()
    return float(along_x / along_y)


@pytest.mark.parametrize("readout_layer", [False, True], ids=["first-layer", "through-a-readout"])
def test_edge_detectors_show_their_orientation(readout_layer: bool) -> None:
    model, tap, conv = _orientation_model(readout_layer)
    images = visualize_filters(model, tap, [0, 1], _normalized_probe(), steps=96, conv=conv)
    vertical_edges, horizontal_edges = (_horizontal_over_vertical_gradient(image) for image in images)
    assert vertical_edges > 2.0, "the vertical-edge detector's image should vary mostly along x"
    assert horizontal_edges < 0.5, "the horizontal-edge detector's image should vary mostly along y"


class _CallCounter(nn.Module):
    """Counts its calls in a buffer (as an observer would) and draws from torch's generator."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return x + 0.0 * torch.rand(())


def _busy_model() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(
        _CallCounter(),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
    )


def _hook_counts(model: nn.Module) -> list[tuple[int, int, int]]:
    return [
        (len(module._forward_hooks), len(module._forward_pre_hooks), len(module._backward_hooks))
        for module in model.modules()
    ]


@pytest.mark.parametrize("stop_at_conv_input", [False, True], ids=["full-forward", "conv-given"])
def test_model_and_global_state_are_untouched(stop_at_conv_input: bool) -> None:
    model = _busy_model()
    model.train()
    model[2].eval()  # a frozen BatchNorm inside a training model stays frozen
    model(_normalized_probe(4))  # training-mode statistics, a counted call
    model[1].weight.grad = torch.full_like(model[1].weight, 0.25)
    model[5].bias.requires_grad_(False)
    parameters = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    grads = {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()}
    requires_grad = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    modes = [module.training for module in model.modules()]
    hooks = _hook_counts(model)
    torch.manual_seed(11)
    random.seed(12)
    np.random.seed(13)
    torch_state, python_state, numpy_state = torch.get_rng_state(), random.getstate(), np.random.get_state()

    conv = model[5] if stop_at_conv_input else None
    visualize_filters(model, model[6], [0, 1, 2, 3], _normalized_probe(4), steps=8, conv=conv)

    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == python_state
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:]
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, parameters[name]), name
        assert parameter.requires_grad == requires_grad[name], name
        if grads[name] is None:
            assert parameter.grad is None, f"{name}.grad was set"
        else:
            assert parameter.grad is not None and torch.equal(parameter.grad, grads[name]), name
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, buffers[name]), name
    assert [module.training for module in model.modules()] == modes
    assert not model[6]._forward_hooks
    assert _hook_counts(model) == hooks
    assert torch.backends.mkldnn.enabled  # switched only around the stem's input gradient


def test_model_is_untouched_when_it_raises() -> None:
    model = _busy_model()
    model.train()
    with pytest.raises(ValueError, match="never reached"):
        visualize_filters(model, nn.Identity(), [0], _normalized_probe(2), steps=2)
    with pytest.raises(ValueError, match="out of range"):
        visualize_filters(model, model[6], [9], _normalized_probe(2), steps=2)
    assert all(module.training for module in model.modules())
    assert not any(module._forward_hooks for module in model.modules())


class _InputRange(nn.Module):
    """Records the per-channel minimum and maximum of every input it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Tensor, Tensor]] = []

    def forward(self, x: Tensor) -> Tensor:
        values = x.detach().transpose(0, 1).flatten(1)
        self.seen.append((values.min(dim=1).values, values.max(dim=1).values))
        return x


def test_images_reach_the_model_in_the_probes_value_range() -> None:
    # Each channel of the probe has its own range, far from [0, 1]: the display images must be
    # mapped into it, as the user's normalization would have put real images there.
    lows, highs = torch.tensor([-2.0, 10.0, 0.0]), torch.tensor([-1.0, 12.0, 0.5])
    probe = lows.view(1, 3, 1, 1) + (highs - lows).view(1, 3, 1, 1) * torch.rand(4, 3, SIZE, SIZE)
    recorder = _InputRange()
    model = nn.Sequential(recorder, nn.Conv2d(3, 2, 3), nn.ReLU())
    visualize_filters(model, model[1], [0, 1], probe, steps=32)
    smallest = torch.stack([low for low, _ in recorder.seen]).min(dim=0).values
    largest = torch.stack([high for _, high in recorder.seen]).max(dim=0).values
    assert torch.all(smallest >= lows - 1e-4) and torch.all(largest <= highs + 1e-4), (smallest, largest)
    assert torch.all(largest - smallest > 0.5 * (highs - lows)), "the images use little of the probe's range"


def test_a_constant_input_channel_still_varies() -> None:
    recorder = _InputRange()
    model = nn.Sequential(recorder, nn.Conv2d(1, 2, 3), nn.ReLU())
    images = visualize_filters(model, model[1], [0, 1], torch.full((2, 1, SIZE, SIZE), 3.0), steps=32)
    smallest = min(float(low) for low, _ in recorder.seen)
    largest = max(float(high) for _, high in recorder.seen)
    assert 2.5 - 1e-4 <= smallest < largest <= 3.5 + 1e-4
    assert images.std() > 0


class _MustNotRun(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        raise AssertionError("the forward went on past the target")


def test_forward_stops_at_the_target() -> None:
    counter = _CallCounter()
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.ReLU(inplace=True), _MustNotRun(), counter)
    images = visualize_filters(model, model[1], [0, 1], _normalized_probe(2), steps=4)
    assert images.shape == (2, SIZE, SIZE, 3)


def test_same_seed_same_images_other_seed_other_images() -> None:
    model = _busy_model()
    probe = _normalized_probe(4)
    first = visualize_filters(model, model[2], [0, 1, 2], probe, steps=16, seed=5)
    again = visualize_filters(model, model[2], [0, 1, 2], probe, steps=16, seed=5)
    other = visualize_filters(model, model[2], [0, 1, 2], probe, steps=16, seed=6)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_shapes_and_dtype() -> None:
    rgb = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU())
    images = visualize_filters(rgb, rgb[0], [4, 0, 4], _normalized_probe(2), steps=2)
    assert images.shape == (3, SIZE, SIZE, 3) and images.dtype == np.uint8

    grey = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU())
    grey_probe = torch.randn(2, 1, 20, 28)  # not square: the images are made at the probe's size
    images = visualize_filters(grey, grey[0], [0, 2], grey_probe, steps=2)
    assert images.shape == (2, 20, 28, 1) and images.dtype == np.uint8

    two = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU())
    images = visualize_filters(two, two[0], [1], torch.randn(2, 2, 16, 16), steps=2)
    assert images.shape == (1, 16, 16, 1)


def test_a_silent_filter_still_gets_an_image() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 2, 3, padding=1)
    with torch.no_grad():
        conv.bias[0] = -100.0  # far below anything the weights can reach: ReLU output 0 everywhere
    model = nn.Sequential(conv, nn.ReLU())
    probe = _normalized_probe()
    with torch.no_grad():
        assert model(probe)[:, 0].max() == 0, "precondition: channel 0 is silent on the probe"
    images = visualize_filters(model, conv, [0], probe, steps=64)
    assert images[0].astype(np.float64).std() / 255.0 > 0.05, "a silent filter's image stayed flat"


def test_bad_arguments_fail_with_a_helpful_message() -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    probe = _normalized_probe(2, size=8)
    with pytest.raises(ValueError, match="`steps` must be >= 1"):
        visualize_filters(model, model[0], [0], probe, steps=0)
    with pytest.raises(TypeError, match="`steps` must be an int"):
        visualize_filters(model, model[0], [0], probe, steps=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"out of range.*2 output channels"):
        visualize_filters(model, model[0], [0, 2], probe, steps=2)
    with pytest.raises(ValueError, match="out of range"):
        visualize_filters(model, model[0], [-1], probe, steps=2)
    with pytest.raises(ValueError, match="`channels` is empty"):
        visualize_filters(model, model[0], [], probe, steps=2)
    with pytest.raises(TypeError, match="`channels` must hold ints"):
        visualize_filters(model, model[0], [0.0], probe, steps=2)  # type: ignore[list-item]
    elsewhere = nn.Conv2d(3, 2, 3)
    with pytest.raises(ValueError, match="never reached the target module Conv2d"):
        visualize_filters(model, elsewhere, [0], probe, steps=2)
    with pytest.raises(ValueError, match="returned a 2-d tensor"):
        visualize_filters(model, model[2], [0], probe, steps=2)
    with pytest.raises(ValueError, match="non-empty 4-d batch"):
        visualize_filters(model, model[0], [0], probe[0], steps=2)
    with pytest.raises(TypeError, match="floating-point tensor"):
        visualize_filters(model, model[0], [0], probe.to(torch.uint8), steps=2)


class _FrozenStem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.conv(x).relu()


def test_a_target_without_gradient_fails_clearly() -> None:
    model = _FrozenStem()
    with pytest.raises(ValueError, match="carries no gradient back to the input"):
        visualize_filters(model, model.conv, [0], _normalized_probe(2, size=8), steps=2)
    assert not model.conv._forward_hooks


def test_channels_checked_from_the_output_when_the_target_does_not_declare_them() -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Identity(), nn.ReLU())
    with pytest.raises(ValueError, match=r"'1' \(Identity\) has 2 output channels"):
        visualize_filters(model, model[1], [2], _normalized_probe(2, size=8), steps=2)


class _Viewing(nn.Module):
    """Flattens and restores with ``view``, which a channels-last tensor does not allow."""

    def forward(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], -1).view(x.shape)


def test_a_forward_that_needs_contiguous_activations_still_works() -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 3), _Viewing(), nn.Conv2d(2, 2, 3), nn.ReLU())
    probe = _normalized_probe(2)
    with pytest.raises(RuntimeError), torch.no_grad():  # precondition: a channels-last input breaks it
        model(probe.contiguous(memory_format=torch.channels_last))
    images = visualize_filters(model, model[2], [0, 1], probe, steps=4)
    assert images.shape == (2, SIZE, SIZE, 3)


def test_chunked_forward_matches_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _busy_model()
    probe = _normalized_probe(4)
    whole = visualize_filters(model, model[6], [0, 1, 2, 3], probe, steps=8)
    monkeypatch.setattr(feature_visualization, "CPU_CHUNK_PIXELS", SIZE * SIZE)  # one image per chunk
    chunked = visualize_filters(model, model[6], [0, 1, 2, 3], probe, steps=8)
    assert np.abs(whole.astype(int) - chunked.astype(int)).max() <= 2


def test_custom_call_and_bfloat16_weights() -> None:
    class DictInput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, batch: dict) -> Tensor:
            return self.conv(batch["image"]).relu()

    model = DictInput().to(torch.bfloat16)
    images = visualize_filters(
        model, model.conv, [0, 1], _normalized_probe(2, size=12), steps=4, call=lambda m, x: m({"image": x})
    )
    assert images.shape == (2, 12, 12, 3)
    assert all(parameter.dtype == torch.bfloat16 for parameter in model.parameters())


# ---------------------------------------------------------------- stopping at the conv's input


def _deeper_model(batch_norm: bool, grouped: bool = False, contiguous: bool = False) -> nn.Sequential:
    """A stem before the visualized conv, so that the conv's input has a gradient path of its own.
    ``grouped``: the conv is grouped, strided and without bias, each filter reading half the input.
    ``contiguous``: the stem ends in a ``view`` that fails on channels-last activations, so the
    forward runs with contiguous ones (as on an accelerator)."""
    torch.manual_seed(4)
    conv = nn.Conv2d(6, 4, 3, stride=2, groups=2, bias=False) if grouped else nn.Conv2d(6, 5, 3)
    pool: nn.Module = nn.Sequential(nn.MaxPool2d(2), _Viewing()) if contiguous else nn.MaxPool2d(2)
    layers: list[nn.Module] = [nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), pool, conv]
    if batch_norm:
        norm = nn.BatchNorm2d(conv.out_channels)
        with torch.no_grad():
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.uniform_(-1.5, 1.5)  # a negative scale too: the response falls as the conv's rises
        layers.append(norm)
    return nn.Sequential(*layers, nn.ReLU(inplace=True), _MustNotRun())


class _Calls:
    """Counts the forward calls of one module through torch's global forward hook, which the
    module's own hook tables do not show."""

    def __init__(self, module: nn.Module) -> None:
        self.module, self.count = module, 0

    def __enter__(self) -> _Calls:
        def count(module: nn.Module, args: object, output: object) -> None:
            if module is self.module:
                self.count += 1

        self._handle = torch.nn.modules.module.register_module_forward_hook(count)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._handle.remove()


@pytest.mark.parametrize(
    ("batch_norm", "grouped", "contiguous"),
    [(False, False, False), (True, False, False), (True, True, False), (True, False, True), (True, True, True)],
    ids=["conv-tap", "conv-bn-tap", "grouped", "contiguous", "grouped-contiguous"],
)
def test_stopping_at_the_conv_input_gives_the_same_images_without_running_the_conv(
    batch_norm: bool, grouped: bool, contiguous: bool
) -> None:
    model = _deeper_model(batch_norm, grouped, contiguous).eval()
    conv, tap = model[3], model[4] if batch_norm else model[3]
    channels = [3, 0, 2, 1] if grouped else [0, 1, 2, 3, 4]
    probe, steps = _normalized_probe(4), 24
    with _Calls(conv) as full_forward:
        expected = visualize_filters(model, tap, channels, probe, steps=steps)
    with _Calls(conv) as stopped:
        images = visualize_filters(model, tap, channels, probe, steps=steps, conv=conv)
    assert full_forward.count > steps  # every step ran the conv
    assert stopped.count <= 2  # only the first forward, which chooses the input's layout
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 2
    assert not np.array_equal(images, visualize_filters(model, tap, channels, probe, steps=1, conv=conv))


class _SquaringConv(nn.Conv2d):
    """A conv of its input's signed square: not affine, as a quantization-aware conv is not."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x * x.abs())


def _absolute_output(module: nn.Module, args: object, output: Tensor) -> Tensor:
    return output.abs()


def _not_affine_cases() -> dict[str, tuple[nn.Sequential, int, int]]:
    """Models where the conv's tap is not an affine function of the conv's input, or the conv
    given is not the tap's: (model, index of the conv given, index of the tap)."""
    batch_statistics = _deeper_model(batch_norm=False)
    batch_statistics.insert(4, nn.BatchNorm2d(5, track_running_stats=False))  # normalizes by the batch, even in eval
    squaring = _deeper_model(batch_norm=True)
    squaring[3] = _SquaringConv(6, 5, 3)
    hooked = _deeper_model(batch_norm=False)
    hooked[3].register_forward_hook(_absolute_output)
    wrong_conv = _deeper_model(batch_norm=True)
    return {
        "batch-statistics": (batch_statistics, 3, 4),
        "subclassed-conv": (squaring, 3, 4),
        "hooked-conv": (hooked, 3, 3),
        "conv-not-feeding-the-tap": (wrong_conv, 0, 4),
    }


@pytest.mark.parametrize("case", list(_not_affine_cases()))
def test_where_the_tap_is_not_affine_in_the_conv_input_the_forward_runs_to_the_tap(case: str) -> None:
    model, conv_index, tap_index = _not_affine_cases()[case]
    model.eval()
    probe = _normalized_probe(4)
    expected = visualize_filters(model, model[tap_index], [0, 1, 2], probe, steps=12)
    with _Calls(model[tap_index]) as calls:
        images = visualize_filters(model, model[tap_index], [0, 1, 2], probe, steps=12, conv=model[conv_index])
    assert calls.count > 12
    assert np.array_equal(images, expected)


class _AddsItsInput(nn.Module):
    """``module(x) + x`` cut to the module's channels and size: the input read a second time."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        y = self.module(x)
        return y + F.adaptive_avg_pool2d(x, y.shape[-2:]).mean(dim=1, keepdim=True)


def _no_op_hook(module: nn.Module, args: object, output: Tensor) -> None:
    return None


class _SideBranch(nn.Module):
    """A plain conv reads the input for a side output the target never sees; the target's path
    reads the input through a pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.side, self.pool, self.target = nn.Conv2d(3, 2, 1), nn.AvgPool2d(1), nn.Conv2d(3, 6, 3)

    def forward(self, x: Tensor) -> Tensor:
        self.side_output = self.side(x)
        return self.target(self.pool(x))


def _stem_cases() -> dict[str, tuple[nn.Module, nn.Module, nn.Module]]:
    """Models whose first conv reads the input, as (model, that conv, target): a ResNet-like
    strided 7x7 stem, one with an in-place ReLU right on the stem's output, one that also reads
    its input a second time, one whose stride and padding were set to ints after construction,
    and one whose conv reading the input feeds a side output only."""
    torch.manual_seed(5)
    strided = nn.Sequential(
        nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3)
    )
    in_place = nn.Sequential(nn.Conv2d(3, 8, 5, padding=2), nn.ReLU(inplace=True), nn.Conv2d(8, 6, 3))
    twice_read = nn.Sequential(_AddsItsInput(nn.Conv2d(3, 8, 3, padding=1)), nn.ReLU(), nn.Conv2d(8, 6, 3))
    int_attributes = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3))
    int_attributes[0].stride, int_attributes[0].padding = 2, 1  # type: ignore[assignment]
    side_branch = _SideBranch()
    return {
        "strided-stem": (strided, strided[0], strided[-1]),
        "in-place-relu-on-the-stem": (in_place, in_place[0], in_place[-1]),
        "input-read-twice": (twice_read, twice_read[0].module, twice_read[-1]),
        "int-stride-and-padding": (int_attributes, int_attributes[0], int_attributes[-1]),
        "stem-feeds-a-side-output-only": (side_branch, side_branch.side, side_branch.target),
    }


@pytest.mark.parametrize("case", list(_stem_cases()))
def test_the_stems_input_gradient_gives_autograds_images(case: str) -> None:
    model, stem, target = _stem_cases()[case]
    model.eval()
    probe, channels = _normalized_probe(4), [0, 2, 3, 5]
    images = visualize_filters(model, target, channels, probe, steps=24)
    # A hook on the stem, even one that changes nothing, leaves the whole backward to autograd.
    stem.register_forward_hook(_no_op_hook)
    expected = visualize_filters(model, target, channels, probe, steps=24)
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 2
    assert torch.backends.mkldnn.enabled
