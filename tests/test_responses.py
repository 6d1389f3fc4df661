"""What each filter responds to: receptive fields, peak patches and their drawings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conftest import conv_bn_relu_stack, count_hooks
from lightning_filterviz.capture.receptive_fields import receptive_field
from lightning_filterviz.core.records import ReceptiveField
from lightning_filterviz.drawing.responses import (
    pair_columns,
    peak_indices,
    peak_patches,
    response_grid,
    through_the_layers,
)
from lightning_filterviz.core.tiles import (
    BACKGROUND_COLOUR,
    COLORMAP_LEVELS,
    FRAME_COLOUR,
    FRAME_PIXELS,
    GRID_PADDING,
    OUTSIDE_GREY,
    PANEL_PADDING,
    colormap_palette,
)

WHITE = np.array([round(255 * c) for c in BACKGROUND_COLOUR], dtype=np.uint8)
GREY_FRAME = np.array([round(255 * c) for c in FRAME_COLOUR], dtype=np.uint8)
OUTSIDE = round(255 * OUTSIDE_GREY)


def planted_model() -> nn.Sequential:
    """3x3 conv, ReLU, /2 max pool, 3x3 conv, ReLU; all weights 1, biases that leave only a pixel's surround on."""
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3, padding=1), nn.ReLU()
    )
    with torch.no_grad():
        for conv in (model[0], model[3]):
            conv.weight.fill_(1.0)
        # conv1: 1 - 0.5 > 0 only within one pixel of the bright pixel; the pool keeps a 2x2 block of 0.5
        # in both channels; conv2 sums to 4 only where its 3x3 window holds the whole block.
        model[0].bias.fill_(-0.5)
        model[3].bias.fill_(-3.5)
    return model


def test_receptive_field_box() -> None:
    field = ReceptiveField(size=(8, 6), stride=(2, 3), offset=(-3, -1))
    assert field.box(0, 0) == (-3, -1, 5, 5)
    assert field.box(4, 2) == (5, 5, 13, 11)


def test_planted_pixel_lands_in_the_peak_patch() -> None:
    model = planted_model()
    y0, x0 = 9, 5
    probe = torch.zeros(1, 1, 16, 16)
    probe[0, 0, y0, x0] = 1.0

    field = receptive_field(model, probe, model[3])
    assert field.size == (8, 8)  # 3 + (3 - 1) * 2 via the pool, + (2 - 1) for the pool window
    assert field.stride == (2, 2)
    assert field.offset == (-3, -3)

    with torch.no_grad():
        response = model(probe)  # post-ReLU output of model[3]
    assert (response[0, 0] > 0).sum() < response[0, 0].numel()  # only the pixel's surround is on
    out_h, out_w = response.shape[-2:]
    peak = int(response[:, 0].reshape(-1).argmax())
    image, y, x = np.unravel_index(peak, (1, out_h, out_w))
    top, left, bottom, right = field.box(int(y), int(x))
    assert max(top, 0) <= y0 < min(bottom, 16) and max(left, 0) <= x0 < min(right, 16)

    pixels = 32
    patches = peak_patches(probe, torch.tensor([peak]), (out_h, out_w), field, patch_pixels=pixels)
    assert patches.shape == (1, pixels, pixels, 3) and patches.dtype == np.uint8
    patch = patches[0]
    assert (patch == patch[..., :1]).all()  # grey repeated to RGB
    # Nearest resize: patch row i shows box row i * box_height // pixels.
    rows = top + np.arange(pixels) * (bottom - top) // pixels == y0
    cols = left + np.arange(pixels) * (right - left) // pixels == x0
    brightest = patch[..., 0] == patch[..., 0].max()
    np.testing.assert_array_equal(brightest, rows[:, None] & cols[None, :])
    assert patch[..., 0].max() == 255


def test_peak_patches_pad_outside_the_image_with_grey() -> None:
    images = torch.rand(2, 1, 8, 8) + 1.0
    field = ReceptiveField(size=(5, 5), stride=(1, 1), offset=(-2, -2))
    # Filter 0 peaks at image 0, (0, 0); filter 1 at image 1, (7, 7).
    patches = peak_patches(images, torch.tensor([0, 64 + 63]), (8, 8), field, patch_pixels=10)
    assert patches.shape == (2, 10, 10, 3)
    first, last = patches[0, ..., 0], patches[1, ..., 0]
    # Box rows -2..2: the first two box rows (patch rows 0..3) are outside.
    assert (first[:4] == OUTSIDE).all() and (first[:, :4] == OUTSIDE).all()
    assert first[4:, 4:].min() == 0 and first[4:, 4:].max() == 255  # min-max over the inside only
    assert (last[6:] == OUTSIDE).all() and (last[:, 6:] == OUTSIDE).all()
    # The inside is the image crop, resized: patch pixel (4 + 2a, 4 + 2b) is image pixel (a, b).
    crop = images[0, 0, :3, :3].numpy()
    expected = np.rint((crop - crop.min()) / (crop.max() - crop.min()) * 255)
    np.testing.assert_array_equal(first[4::2, 4::2], expected)


def test_peak_patches_keep_colour() -> None:
    images = np.zeros((1, 3, 6, 6), dtype=np.float32)
    images[0, 0, 2, 3] = 1.0  # one red pixel
    field = ReceptiveField(size=(3, 3), stride=(1, 1), offset=(-1, -1))
    patches = peak_patches(images, np.array([2 * 6 + 3]), (6, 6), field, patch_pixels=3)
    np.testing.assert_array_equal(patches[0, 1, 1], [255, 0, 0])
    assert (patches[0][np.arange(3) != 1][:, :, 1:] == 0).all()


def test_peak_indices_are_flat_argmax_over_images_and_positions() -> None:
    activation = torch.zeros(2, 3, 4, 5)
    activation[1, 0, 2, 3] = 5.0
    activation[0, 2, 0, 1] = 1.0
    assert peak_indices(activation).tolist() == [20 + 2 * 5 + 3, 0, 1]


@pytest.mark.parametrize(
    "conv, size, stride, offset",
    [
        (nn.Conv2d(1, 2, 5, stride=1, padding=2), (5, 5), (1, 1), (-2, -2)),
        (nn.Conv2d(1, 2, 3, stride=2, padding=1), (3, 3), (2, 2), (-1, -1)),
        (nn.Conv2d(1, 2, (3, 5), stride=(1, 2), padding=(0, 1)), (3, 5), (1, 2), (0, -1)),
    ],
)
def test_single_conv_fields(conv: nn.Conv2d, size: tuple, stride: tuple, offset: tuple) -> None:
    field = receptive_field(conv, torch.randn(2, 1, 15, 15), conv)
    assert field == ReceptiveField(size, stride, offset)


class FunctionalNet(nn.Module):
    """Strided conv, F.relu, F.max_pool2d with padding, dilated conv."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.second = nn.Conv2d(4, 4, 3, padding=2, dilation=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.second(F.max_pool2d(F.relu(self.first(x)), 3, 2, 1))


def test_field_through_functional_pool_and_dilation() -> None:
    model = FunctionalNet()
    # first: 3, jump 2, offset -1; pool 3/2/1: 3 + 2*2 = 7, jump 4, offset -3;
    # dilated 3x3 (span 5), padding 2: 7 + 4*4 = 23, offset -3 - 2*4 = -11.
    field = receptive_field(model, torch.randn(2, 3, 64, 64), model.second)
    assert field == ReceptiveField((23, 23), (4, 4), (-11, -11))


def test_dead_relus_and_pool_winners_do_not_shrink_the_field() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every ReLU off
    field = receptive_field(model, torch.randn(1, 1, 20, 20), model[3])
    assert field == ReceptiveField((8, 8), (2, 2), (-1, -1))


def test_field_of_a_conv_followed_by_an_inplace_relu() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(2, 2, 3, padding=1))
    assert receptive_field(model, torch.randn(1, 1, 12, 12), model[0]).size == (3, 3)
    assert receptive_field(model, torch.randn(1, 1, 12, 12), model[2]).size == (5, 5)


def test_receptive_field_leaves_the_model_as_it_was() -> None:
    model = conv_bn_relu_stack(inplace=True)
    model.train()
    model[1].eval()  # one module in another mode than its parent
    modes = [module.training for module in model.modules()]
    hooks = count_hooks(model)
    stats = model[1].running_mean.clone()
    inputs = torch.randn(4, 3, 16, 16)
    rng = torch.get_rng_state()

    field = receptive_field(model, inputs, model[3])

    assert field == ReceptiveField((5, 5), (1, 1), (-2, -2))
    assert count_hooks(model) == hooks == 0
    assert all(parameter.grad is None for parameter in model.parameters())
    assert [module.training for module in model.modules()] == modes
    assert torch.equal(model[1].running_mean, stats)
    assert torch.equal(torch.get_rng_state(), rng)


def test_receptive_field_restores_the_model_when_the_forward_raises() -> None:
    model = conv_bn_relu_stack()
    model.train()

    def failing_forward(module: nn.Module, x: Tensor) -> Tensor:
        module(x)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        receptive_field(model, torch.randn(1, 3, 16, 16), model[0], forward_fn=failing_forward)
    assert count_hooks(model) == 0
    assert all(module.training for module in model.modules())
    assert all(parameter.grad is None for parameter in model.parameters())


def test_receptive_field_with_forward_fn_and_under_inference_mode() -> None:
    conv = nn.Conv2d(3, 2, 3, padding=1)
    model = nn.ModuleDict({"conv": conv})
    calls = []

    def forward(module: nn.Module, x: Tensor) -> Tensor:
        calls.append(x.shape)
        return module["conv"](x)

    with torch.inference_mode():
        inputs = torch.randn(3, 3, 10, 10)
        field = receptive_field(model, inputs, conv, forward_fn=forward)
    assert field == ReceptiveField((3, 3), (1, 1), (-1, -1))
    assert calls == [(1, 3, 10, 10)]


def test_receptive_field_errors_name_the_conv() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3))
    with pytest.raises(ValueError, match=r"'2'.*at least 3x3"):
        receptive_field(model, torch.randn(1, 1, 11, 11), model[2])  # 5x5 -> 3x3 -> 1x1
    stray = nn.Conv2d(1, 1, 3)
    with pytest.raises(ValueError, match="did not run"):
        receptive_field(model, torch.randn(1, 1, 11, 11), stray)
    # The field of the centre covers the whole 5x5 probe: it cannot be measured.
    wide = nn.Conv2d(1, 1, 5, padding=2)
    with pytest.raises(ValueError, match="larger input"):
        receptive_field(wide, torch.randn(1, 1, 5, 5), wide)


def pair_grid_shape(count: int, columns: int, patch: int) -> tuple[int, int]:
    tile = patch + 2 * FRAME_PIXELS
    pair_height, pair_width = tile, 2 * tile + GRID_PADDING
    rows = -(-count // columns)
    return (
        PANEL_PADDING + rows * (pair_height + PANEL_PADDING),
        PANEL_PADDING + columns * (pair_width + PANEL_PADDING),
    )


def test_response_grid_pairs_filters_with_patches() -> None:
    weight = torch.randn(5, 3, 3, 3)
    patches = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    grid = response_grid(weight, rgb=True, patches=patches)
    assert pair_columns(5) == 2
    assert grid.dtype == np.uint8 and grid.shape == (*pair_grid_shape(5, 2, 32), 3)

    tile = 32 + 2 * FRAME_PIXELS
    # Pair 3 is in row 1, column 1.
    top = PANEL_PADDING + 1 * (tile + PANEL_PADDING)
    left = PANEL_PADDING + 1 * (2 * tile + GRID_PADDING + PANEL_PADDING)
    patch_left = left + tile + GRID_PADDING
    np.testing.assert_array_equal(grid[top + 1 : top + 33, patch_left + 1 : patch_left + 33], patches[3])
    np.testing.assert_array_equal(grid[top, left], GREY_FRAME)
    # The filter, normalized on its own, resized nearest: pixel (0, 0) is kernel (0, 0).
    kernel = weight[3].numpy()
    unit = (kernel - kernel.min()) / (kernel.max() - kernel.min())
    np.testing.assert_array_equal(grid[top + 1, left + 1], np.rint(unit[:, 0, 0] * 255))
    np.testing.assert_array_equal(grid[top + 32, left + 32], np.rint(unit[:, 2, 2] * 255))
    assert (grid[top : top + tile, left + tile : patch_left] == WHITE).all()  # the gap inside a pair


def test_response_grid_grey_filters_and_columns() -> None:
    weight = np.random.default_rng(1).normal(size=(7, 4, 3, 3)).astype(np.float32)
    patches = np.zeros((6, 20, 20, 3), dtype=np.uint8)  # one filter more than patches: it is not drawn
    grid = response_grid(weight, rgb=False, patches=patches, columns=4)
    assert grid.dtype == np.uint8 and grid.shape == (*pair_grid_shape(6, 4, 20), 3)
    first = grid[PANEL_PADDING + 1 : PANEL_PADDING + 21, PANEL_PADDING + 1 : PANEL_PADDING + 21]
    assert (first == first[..., :1]).all()  # grey
    assert first.min() == 0 and first.max() == 255
    with pytest.raises(ValueError, match="filters"):
        response_grid(weight[:3], rgb=False, patches=patches)


def test_through_the_layers_layout_and_channel_choice() -> None:
    early = torch.stack([torch.full((16, 16), value) for value in (0.0, 3.0, 1.0, 2.0)])
    deep = np.ones((1, 4, 4), dtype=np.float32)
    deep[0, :, :2] = 5.0  # left half high
    image = through_the_layers({"early": early, "deep": deep}, channels=2, height=10).to_rgb()

    cell = 10 + GRID_PADDING
    assert image.dtype == np.uint8 and image.shape == (GRID_PADDING + 2 * cell, GRID_PADDING + 2 * cell, 3)
    palette = colormap_palette("viridis")
    top, bottom = GRID_PADDING, GRID_PADDING + cell
    left, right = GRID_PADDING, GRID_PADDING + cell
    # Early layer: channels 1 (mean 3) then 3 (mean 2), normalized together.
    assert (image[top : top + 10, left : left + 10] == palette[COLORMAP_LEVELS - 1]).all()
    assert (image[bottom : bottom + 10, left : left + 10] == palette[0]).all()
    # Deep layer: its one channel, resized nearest (left half high), and a white space below it.
    assert (image[top : top + 10, right : right + 5] == palette[COLORMAP_LEVELS - 1]).all()
    assert (image[top : top + 10, right + 5 : right + 10] == palette[0]).all()
    assert (image[bottom : bottom + 10, right : right + 10] == WHITE).all()
    # White gaps between columns.
    assert (image[:, left + 10 : right] == WHITE).all()


def test_through_the_layers_shape_with_more_layers() -> None:
    maps = {f"layer{index}": np.random.default_rng(index).random((8, 6, 9)) for index in range(3)}
    image = through_the_layers(maps, channels=4, height=12, colormap="magma").to_rgb()
    cell = 12 + GRID_PADDING
    assert image.shape == (GRID_PADDING + 4 * cell, GRID_PADDING + 3 * cell, 3)
    with pytest.raises(ValueError, match="at least one layer"):
        through_the_layers({})
