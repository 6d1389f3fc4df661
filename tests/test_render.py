"""Pixels: filters and feature maps render to the expected tiles, read back from event files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from conftest import read_events
from lightning_filterviz import FilterVisualizer
from lightning_filterviz.core.filters import displayed_filters
from lightning_filterviz.drawing.render import activation_grid, weight_grid
from lightning_filterviz.core.tiles import (
    COLORMAP_LEVELS,
    DEAD_COLOUR,
    FRAME_COLOUR,
    FRAME_PIXELS,
    GRID_PADDING,
    NON_FINITE_COLOUR,
    IndexedImage,
    tile_origin,
)

RED = np.array([round(255 * c) for c in DEAD_COLOUR], dtype=np.uint8)
GREY = np.array([round(255 * c) for c in FRAME_COLOUR], dtype=np.uint8)
MAGENTA = np.array([round(255 * c) for c in NON_FINITE_COLOUR], dtype=np.uint8)


def grid_shape(tiles: int, tile: int = 24) -> tuple[int, int]:
    columns = int(np.ceil(np.sqrt(tiles)))
    rows = int(np.ceil(tiles / columns))
    cell = tile + 2 * FRAME_PIXELS + GRID_PADDING
    return GRID_PADDING + rows * cell, GRID_PADDING + columns * cell


def known_rgb_filter() -> torch.Tensor:
    """One 3x3 RGB filter with values 0..26 (channel-major), then shifted and scaled."""
    values = torch.arange(27, dtype=torch.float32).view(1, 3, 3, 3)
    return values * 0.01 - 0.1  # per-filter min-max normalization must undo the affine map


def grey(value: float) -> int:
    """The grey a unit value gets: grey filters use a 252-level palette (4 entries are frames)."""
    return round(round(value * 251) / 251 * 255)


def pixels(image) -> np.ndarray:
    """``(H, W, 3)`` pixels of a rendered image, RGB or palette."""
    return image.to_rgb() if isinstance(image, IndexedImage) else image


def tile(image: np.ndarray, index: int, size: int, nrow: int) -> np.ndarray:
    top, left = tile_origin(index, size, size, nrow)
    return image[top : top + size, left : left + size]


def test_known_filter_renders_to_normalized_tile_in_event_file(tmp_path):
    conv = nn.Conv2d(3, 1, 3, bias=False)
    with torch.no_grad():
        conv.weight.copy_(known_rgb_filter())
    model = nn.Sequential(conv, nn.ReLU())
    writer = SummaryWriter(str(tmp_path))
    FilterVisualizer(writer).snapshot(model, torch.randn(2, 3, 8, 8), step=0)
    writer.close()

    image = read_events(tmp_path).images["filterviz/weights/0"][0]
    scale = 8  # a 3x3 kernel is upscaled to 24 pixels
    drawn = tile(image, 0, 3 * scale, nrow=1)
    expected = np.empty((3, 3, 3), dtype=np.uint8)
    for channel in range(3):
        for row in range(3):
            for column in range(3):
                expected[row, column, channel] = round((channel * 9 + row * 3 + column) / 26 * 255)
    assert np.array_equal(drawn, np.kron(expected, np.ones((scale, scale, 1), dtype=np.uint8)))
    # The frame around a live filter is grey.
    top, left = tile_origin(0, 24, 24, nrow=1)
    assert np.array_equal(image[top - FRAME_PIXELS, left], GREY)


def test_layer_and_symmetric_normalization_use_a_shared_range():
    weight = torch.zeros(2, 1, 1, 1)
    weight[0] = 1.0
    weight[1] = -3.0
    layer = pixels(weight_grid(weight, "layer"))
    assert tile(layer, 0, 24, nrow=2)[0, 0, 0] == 255  # the layer max
    assert tile(layer, 1, 24, nrow=2)[0, 0, 0] == 0  # the layer min

    symmetric = pixels(weight_grid(weight, "symmetric", symmetric_range=4.0))
    assert tile(symmetric, 0, 24, nrow=2)[0, 0, 0] == grey((1 / 4 + 1) / 2)
    assert tile(symmetric, 1, 24, nrow=2)[0, 0, 0] == grey((-3 / 4 + 1) / 2)


def test_symmetric_range_is_fixed_at_first_snapshot_so_growth_shows(tmp_path):
    from PIL import Image

    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(0.5)
    visualizer = FilterVisualizer(str(tmp_path), weight_normalization="symmetric", log_activations=False)
    visualizer.snapshot(model, torch.zeros(1, 1, 4, 4), step=0)
    with torch.no_grad():
        model[0].weight.fill_(0.25)
    visualizer.snapshot(model, torch.zeros(1, 1, 4, 4), step=1)

    drawn = [np.asarray(Image.open(tmp_path / "weights/0" / f"step_{step:08d}.png").convert("RGB")) for step in (0, 1)]
    top, left = tile_origin(0, 24, 24, nrow=1)
    assert drawn[0][top, left, 0] == 255  # 0.5 of a +-0.5 range
    assert drawn[1][top, left, 0] == grey((0.25 / 0.5 + 1) / 2)  # shrank, and it shows


def test_many_input_channels_show_the_strongest_slice_in_grey():
    weight = torch.zeros(1, 4, 2, 2)
    weight[0, 2] = torch.tensor([[0.0, 1.0], [2.0, 4.0]])  # the strongest input channel
    weight[0, 0] = torch.tensor([[0.1, 0.0], [0.0, 0.0]])
    image = pixels(weight_grid(weight))
    drawn = tile(image, 0, 24, nrow=1)
    assert np.array_equal(drawn[..., 0], drawn[..., 1]) and np.array_equal(drawn[..., 1], drawn[..., 2])
    assert [drawn[0, 0, 0], drawn[0, 12, 0], drawn[12, 0, 0], drawn[12, 12, 0]] == [grey(0), grey(0.25), grey(0.5), 255]


def test_dead_filters_are_framed_in_red():
    weight = torch.randn(4, 3, 3, 3)
    image = pixels(weight_grid(weight, marked=[2]))
    for index in range(4):
        top, left = tile_origin(index, 24, 24, nrow=2)
        frame = image[top - FRAME_PIXELS, left]
        assert np.array_equal(frame, RED if index == 2 else GREY)

    maps = torch.rand(1, 4, 4, 4)
    maps[0, 1] = 0.0
    drawn = activation_grid(maps, marked=[1]).to_rgb()
    top, left = tile_origin(1, 32, 32, nrow=2)
    assert np.array_equal(drawn[top - FRAME_PIXELS, left], RED)
    top, left = tile_origin(0, 32, 32, nrow=2)
    assert np.array_equal(drawn[top - FRAME_PIXELS, left], GREY)


def test_feature_maps_are_scaled_over_the_layer_and_colour_mapped():
    import matplotlib

    maps = torch.zeros(1, 2, 2, 2)
    maps[0, 0] = 2.0  # the layer maximum
    maps[0, 1, 0, 0] = 1.0
    image = activation_grid(maps, colormap="gray").to_rgb()
    gray = matplotlib.colormaps["gray"]
    assert np.array_equal(tile(image, 0, 32, nrow=2)[0, 0], [255, 255, 255])
    half = np.round(np.array(gray(0.5)[:3]) * 255)
    assert np.abs(tile(image, 1, 32, nrow=2)[0, 0].astype(int) - half).max() <= 1
    assert np.array_equal(tile(image, 1, 32, nrow=2)[16, 16], [0, 0, 0])


def test_a_few_bright_positions_do_not_wash_out_the_layer():
    maps = torch.zeros(1, 4, 8, 8)
    maps[0, 0] = 1.0  # a busy channel
    maps[0, 1, 3, 3] = 1000.0  # one position far brighter than everything else
    levels = activation_grid(maps, colormap="gray").indices
    first, silent = tile(levels[..., None], 0, 32, nrow=2)[..., 0], tile(levels[..., None], 3, 32, nrow=2)[..., 0]
    # Under a min..max range the busy channel would sit at 1/1000 of the scale: black.
    assert (first >= COLORMAP_LEVELS - 1).all()  # at the 99.5th percentile, so at the top
    assert (silent == 0).all()  # a silent channel still looks silent
    assert tile(levels[..., None], 1, 32, nrow=2)[3 * 4, 3 * 4, 0] == COLORMAP_LEVELS - 1  # the bright one saturates


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_render_without_error(bad):
    weight = torch.randn(2, 3, 3, 3)
    weight[0, 0, 0, 0] = bad
    image = weight_grid(weight)
    assert image.dtype == np.uint8 and image.shape == (*grid_shape(2), 3)
    top, left = tile_origin(0, 24, 24, nrow=2)
    assert np.array_equal(image[top - FRAME_PIXELS, left], MAGENTA)
    top, left = tile_origin(1, 24, 24, nrow=2)
    assert np.array_equal(image[top - FRAME_PIXELS, left], GREY)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_value_in_a_weak_input_channel_still_marks_the_filter(bad):
    weight = torch.randn(3, 5, 3, 3)
    weight[0, 1] = 1e20  # squares overflow to Inf, yet the channel is finite
    weight[0, 3, 1, 1] = bad  # the broken channel is not the strongest finite one
    weight[1, 2] *= 10.0
    shown = displayed_filters(weight.numpy(), rgb=False)
    assert shown.shape == (3, 1, 3, 3)
    assert not np.isfinite(shown[0]).all() and np.array_equal(shown[1, 0], weight[1, 2].numpy())
    assert displayed_filters(shown, rgb=False) is shown  # drawing the drawn part draws the same
    image = weight_grid(weight)
    assert np.array_equal(image.to_rgb(), weight_grid(shown, rgb=False).to_rgb())
    for index, frame in enumerate((MAGENTA, GREY, GREY)):
        top, left = tile_origin(index, 24, 24, nrow=2)
        assert np.array_equal(image.to_rgb()[top - FRAME_PIXELS, left], frame)


def test_grouped_and_depthwise_convs_are_drawn_in_grey_not_rgb(tmp_path):
    from lightning_filterviz import capture_snapshot
    from lightning_filterviz.capture.conv_layers import select_conv_layers

    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),  # sees the RGB image: colour
        nn.Conv2d(6, 4, 3, padding=1, groups=2),  # 3 channels per group, but not RGB
        nn.Conv2d(4, 4, 3, padding=1, groups=4),  # depthwise
    )
    snapshot = capture_snapshot(model, torch.randn(1, 3, 8, 8), select_conv_layers(model), 0)
    assert [layer.rgb for layer in snapshot.layers.values()] == [True, False, False]
    assert isinstance(weight_grid(snapshot.layers["0"].weight, rgb=True), np.ndarray)
    grouped = weight_grid(snapshot.layers["1"].weight, rgb=False)
    depthwise = weight_grid(snapshot.layers["2"].weight, rgb=False)
    for image in (grouped, depthwise):
        rgb = pixels(image)
        top, left = tile_origin(0, 24, 24, nrow=2)
        drawn = rgb[top : top + 24, left : left + 24]
        assert np.array_equal(drawn[..., 0], drawn[..., 1]) and np.array_equal(drawn[..., 1], drawn[..., 2])
    # The grouped filter shows its strongest input slice: compare with it directly.
    weight = snapshot.layers["1"].weight[0]
    strongest = weight[weight.flatten(1).norm(dim=1).argmax()]
    expected = np.array([[grey(float(v)) for v in row] for row in ((strongest - strongest.min()) / (strongest.max() - strongest.min()))])
    top, left = tile_origin(0, 24, 24, nrow=2)
    drawn = pixels(grouped)[top : top + 24 : 8, left : left + 24 : 8, 0].astype(int)
    assert np.abs(drawn - expected).max() <= 1  # float32 vs float64 rounding at a level's edge
