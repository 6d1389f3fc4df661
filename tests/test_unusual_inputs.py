"""Probes with unusual contents: NaN or Inf pixels, and images of neither 1 nor 3 channels.

Ground truth comes from the test's own forward of the same model (activations after each
ReLU, read with forward hooks), never from the package's reductions.
"""

from __future__ import annotations

import logging
import warnings
from typing import Mapping

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from conftest import Classifier, FilterMonitor, RandomImages, pl, trainer_kwargs
from lightning_filterviz import FilterVisualizer, Sink
from lightning_filterviz.core.png import EncodedImage
from lightning_filterviz.core.records import ReceptiveField
from lightning_filterviz.core.tags import ACTIVATIONS, PROBE_TAG, RESPONSES, layer_tag
from lightning_filterviz.core.tiles import (
    FRAME_INDEX,
    FRAME_PIXELS,
    GRID_PADDING,
    NON_FINITE_COLOUR,
    NON_FINITE_INDEX,
    OUTSIDE_GREY,
    PANEL_PADDING,
    tile_origin,
    to_uint8,
)
from lightning_filterviz.drawing.example_images import CHECKER_GREYS, patch_tiles
from lightning_filterviz.drawing.render import activation_grid
from lightning_filterviz.drawing.responses import pair_columns

MAGENTA = np.array([round(255 * c) for c in NON_FINITE_COLOUR], dtype=np.uint8)
OUTSIDE = round(255 * OUTSIDE_GREY)
SIZE = 10
NAN_AT = (1, 0, 4, 5)  # image, channel, row, column
INF_AT = (3, -1, 2, 2)
DEAD = {"0": [1, 4], "2": [2]}


class Collected(Sink):
    """Keeps every image it is given, as RGB pixels, by (tag, step)."""

    takes_images = True

    def __init__(self) -> None:
        self.images: dict[tuple[str, int], EncodedImage] = {}

    def add_images(self, images: Mapping[str, EncodedImage], step: int) -> None:
        for tag, image in images.items():
            self.images[tag, step] = image


def planted_model(channels: int) -> nn.Sequential:
    """Two conv + ReLU layers whose filters in DEAD have zero weights and a negative bias:
    their ReLU output is 0 at every finite position, whatever the input."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(channels, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1), nn.ReLU())
    with torch.no_grad():
        for name, dead in DEAD.items():
            conv = model.get_submodule(name)
            conv.bias.abs_().add_(0.1)  # healthy filters fire somewhere on random images
            conv.weight[dead] = 0.0
            conv.bias[dead] = -1.0
    return model


def probe_with_non_finite(channels: int) -> Tensor:
    torch.manual_seed(1)
    probe = torch.randn(4, channels, SIZE, SIZE)
    probe[NAN_AT] = float("nan")
    probe[INF_AT] = float("inf")
    return probe


def relu_outputs(model: nn.Sequential, probe: Tensor) -> dict[str, Tensor]:
    """Conv name -> its ReLU's output on ``probe``, by the test's own hooks."""
    outputs: dict[str, Tensor] = {}
    handles = [
        model[index + 1].register_forward_hook(lambda module, args, out, name=str(index): outputs.update({name: out}))
        for index in (0, 2)
    ]
    with torch.no_grad():
        model(probe)
    for handle in handles:
        handle.remove()
    return outputs


def finite_statistics(activation: Tensor) -> tuple[Tensor, Tensor]:
    """Per channel, the maximum and the mean |h| over the finite positions only."""
    per_channel = activation.transpose(0, 1).reshape(activation.shape[1], -1)
    finite = per_channel.isfinite()
    maximum = torch.where(finite, per_channel, float("-inf")).amax(dim=1)
    mean_abs = torch.where(finite, per_channel.abs(), 0.0).sum(dim=1) / finite.sum(dim=1)
    return maximum, mean_abs


def run_snapshots(model: nn.Module, probe: Tensor, steps: int = 3, **settings) -> tuple[list, Collected, list]:
    sink = Collected()
    visualizer = FilterVisualizer(
        sink, background=False, max_images=4, response_layers=["0", "2"], views_every=1, **settings
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # each call counted, not only the first per line
        snapshots = [visualizer.snapshot(model, probe, step) for step in range(steps)]
    return snapshots, sink, caught


# ---------------------------------------------------------------- NaN and Inf in the probe


def test_non_finite_probe_pixels_hide_no_dead_filter_and_are_never_peaks() -> None:
    model, probe = planted_model(3), probe_with_non_finite(3)
    finite_images = [index for index in range(len(probe)) if probe[index].isfinite().all()]
    assert finite_images == [0, 2]

    snapshots, _, _ = run_snapshots(model, probe)
    without, _, _ = run_snapshots(model, probe[finite_images])
    # The planted filters, exactly; and the same set as on the finite images alone.
    assert snapshots[-1].dead_filters == {name: tuple(dead) for name, dead in DEAD.items()}
    assert without[-1].dead_filters == snapshots[-1].dead_filters

    truth = relu_outputs(model, probe)
    for name, activation in truth.items():
        assert not activation.isfinite().all()  # the NaN and the Inf reach every layer
        layer = snapshots[-1].layers[name]
        maximum, mean_abs = finite_statistics(activation)
        assert torch.equal(layer.channel_max, maximum)
        torch.testing.assert_close(layer.channel_mean_abs, mean_abs, rtol=1e-6, atol=0.0)
        # Each peak is the strongest finite position, never a NaN or an Inf one.
        flat = activation.transpose(0, 1).reshape(activation.shape[1], -1)
        peaks = layer.peak_index
        assert flat.gather(1, peaks[:, None]).isfinite().all()
        torch.testing.assert_close(flat.gather(1, peaks[:, None])[:, 0], maximum)
    # Sanity control: a plain maximum is NaN for every channel of the first layer, which
    # is what hid the dead filters.
    assert truth["0"].transpose(0, 1).reshape(6, -1).amax(dim=1).isnan().all()


def test_a_probe_given_nan_in_place_after_clean_snapshots_is_judged_on_its_finite_values() -> None:
    """A probe found finite takes plain reductions; written in place afterwards, it is checked
    again, so the NaN it now holds hides no dead filter."""
    model, probe = planted_model(3), probe_with_non_finite(3).nan_to_num(0.0, 0.0, 0.0)
    visualizer = FilterVisualizer(Collected(), background=False, max_images=4)
    clean = [visualizer.snapshot(model, probe, step) for step in range(2)][-1]  # dead: 2 in a row
    assert clean.dead_filters == {name: tuple(dead) for name, dead in DEAD.items()}

    probe[NAN_AT] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dirty = visualizer.snapshot(model, probe, 2)
    assert dirty.dead_filters == clean.dead_filters
    for name, activation in relu_outputs(model, probe).items():
        assert not activation.isfinite().all()
        assert torch.equal(dirty.layers[name].channel_max, finite_statistics(activation)[0])


def test_the_callback_judges_a_probe_with_nan_on_its_finite_values(tmp_path) -> None:
    """The callback tells the engine whether its probe is finite (checked in host memory, since
    on a GPU the engine sees only the device copy): a probe with NaN and Inf is told apart."""
    net = nn.Sequential(planted_model(3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    monitor = FilterMonitor(probe=probe_with_non_finite(3), every_n_steps=1)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1, limit_train_batches=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Classifier(net, lr=0.0), datamodule=RandomImages())
    assert monitor.dead_filters == {f"net.0.{name}": dead for name, dead in DEAD.items()}


def test_one_warning_names_the_non_finite_probe_images() -> None:
    _, _, caught = run_snapshots(planted_model(3), probe_with_non_finite(3), steps=4)
    about_probe = [str(w.message) for w in caught if "NaN or Inf" in str(w.message)]
    assert len(about_probe) == 1
    assert "probe image(s) [1, 3]" in about_probe[0]
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]  # no NumPy cast warning

    _, _, clean = run_snapshots(planted_model(3), probe_with_non_finite(3).nan_to_num(0.0, 0.0, 0.0), steps=2)
    assert not [w for w in clean if "NaN or Inf" in str(w.message)]


def test_probe_image_marks_exactly_the_non_finite_pixels() -> None:
    probe = probe_with_non_finite(3)
    _, sink, _ = run_snapshots(planted_model(3), probe, steps=1)
    drawn = sink.images[PROBE_TAG, 0].rgb
    tiles = np.stack([tile_at(drawn, index, SIZE, SIZE, GRID_PADDING, framed=False) for index in range(4)])

    magenta = (tiles == MAGENTA).all(axis=-1)
    expected = np.zeros(magenta.shape, dtype=bool)
    expected[NAN_AT[0], NAN_AT[2], NAN_AT[3]] = expected[INF_AT[0], INF_AT[2], INF_AT[3]] = True
    np.testing.assert_array_equal(magenta, expected)
    # The rest: each image min-max normalized over its finite pixels.
    for index, image in enumerate(probe.numpy()):
        finite = np.isfinite(image).all(axis=0)
        low, high = image[:, finite].min(), image[:, finite].max()
        unit = np.rint((image - low) / (high - low) * 255).transpose(1, 2, 0)
        np.testing.assert_array_equal(tiles[index][finite], unit[finite])


def test_feature_maps_draw_non_finite_values_magenta() -> None:
    maps = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    maps[1, 2, 0, 3] = np.nan
    maps[0, 1, 2, 2] = np.inf
    grid = activation_grid(maps)
    assert (grid.palette[NON_FINITE_INDEX] == MAGENTA).all()
    # Maps of 4x4 are drawn 32 pixels wide (8 per value), 2 columns of channels per image
    # panel, panels side by side: each non-finite value is exactly its own 8x8 block.
    panel_width = activation_grid(maps[:1]).indices.shape[1]
    expected = np.zeros(grid.indices.shape, dtype=bool)
    for image, channel, row, column in ((1, 2, 0, 3), (0, 1, 2, 2)):
        top, left = tile_origin(channel, 32, 32, 2)
        top, left = top + PANEL_PADDING + 8 * row, left + PANEL_PADDING + image * (panel_width + PANEL_PADDING) + 8 * column
        expected[top : top + 8, left : left + 8] = True
    frames = activation_grid(np.nan_to_num(maps, nan=0.0, posinf=0.0)).indices == FRAME_INDEX
    np.testing.assert_array_equal((grid.indices == NON_FINITE_INDEX) & ~frames, expected)

    _, sink, _ = run_snapshots(planted_model(3), probe_with_non_finite(3), steps=1)
    drawn = sink.images[layer_tag(ACTIVATIONS, "0"), 0].rgb
    assert (drawn == MAGENTA).all(axis=-1).any()


def test_example_patches_tell_the_image_s_own_nan_from_outside_it() -> None:
    patches = np.full((1, 4, 6, 6), np.nan, dtype=np.float32)
    patches[0, :, 2:, 1:] = np.random.default_rng(0).random((4, 4, 5))  # rows 0-1 and column 0 outside
    patches[0, 3, 4, 3] = np.nan  # the image's own, in a channel not drawn
    patches[0, 0, 3, 2] = np.inf
    tiles = patch_tiles(patches, np.array([True]))[0]
    checker = set(to_uint8(np.array(CHECKER_GREYS)).tolist())
    assert set(tiles[:2].ravel().tolist()) == checker and set(tiles[:, 0].ravel().tolist()) == checker
    magenta = (tiles == MAGENTA).all(axis=-1)
    assert sorted(zip(*np.nonzero(magenta))) == [(3, 2), (4, 3)]


# ---------------------------------------------------------------- channel counts


@pytest.mark.parametrize("channels, drawn, said", [(2, [0], "first channel in grey"), (4, [0, 1, 2], "first three as RGB"), (5, [0, 1, 2], "first three as RGB")])
def test_images_of_other_channel_counts_are_drawn(
    channels: int, drawn: list[int], said: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = planted_model(channels)
    torch.manual_seed(2)
    probe = torch.randn(4, channels, SIZE, SIZE)
    with caplog.at_level(logging.INFO):
        snapshots, sink, _ = run_snapshots(model, probe, steps=2)
    assert sum(said in record.getMessage() for record in caplog.records) == 1

    # Statistics from every channel, as the test's own forward gives them.
    truth = relu_outputs(model, probe)
    for name, activation in truth.items():
        maximum, mean_abs = finite_statistics(activation)
        assert torch.equal(snapshots[-1].layers[name].channel_max, maximum)
        torch.testing.assert_close(snapshots[-1].layers[name].channel_mean_abs, mean_abs, rtol=1e-6, atol=0.0)
    assert snapshots[-1].dead_filters == {name: tuple(dead) for name, dead in DEAD.items()}

    # The probe image: the expected channels, each image normalized over them.
    grid = sink.images[PROBE_TAG, 0].rgb
    for index, image in enumerate(probe.numpy()):
        shown = image[drawn]
        unit = np.rint((shown - shown.min()) / (shown.max() - shown.min()) * 255).transpose(1, 2, 0)
        expected = np.repeat(unit, 3, axis=-1) if len(drawn) == 1 else unit
        np.testing.assert_array_equal(tile_at(grid, index, SIZE, SIZE, GRID_PADDING, framed=False), expected)

    # Peak patches: for each filter of the first conv, its field around the strongest position, in those channels.
    field = snapshots[-1].receptive_fields["0"]
    assert field == ReceptiveField((3, 3), (1, 1), (-1, -1))
    responses = sink.images[layer_tag(RESPONSES, "0"), 1].rgb
    activation = truth["0"]
    columns = pair_columns(activation.shape[1])
    for index in range(activation.shape[1]):
        peak = int(activation[:, index].reshape(-1).argmax())
        image, y, x = np.unravel_index(peak, (4, SIZE, SIZE))
        patch = response_patch(responses, index, columns)
        np.testing.assert_array_equal(patch, expected_patch(probe.numpy()[image][drawn], field.box(int(y), int(x))))


# ---------------------------------------------------------------- helpers


def tile_at(grid: np.ndarray, index: int, height: int, width: int, padding: int, framed: bool) -> np.ndarray:
    """Tile ``index`` of a one-row grid."""
    frame = FRAME_PIXELS if framed else 0
    top = padding + frame
    left = padding + index * (width + 2 * frame + padding) + frame
    return grid[top : top + height, left : left + width]


PATCH = 32


def response_patch(grid: np.ndarray, index: int, columns: int) -> np.ndarray:
    """The peak patch of pair ``index`` in a response grid (filter, gap, patch; each framed)."""
    framed = PATCH + 2 * FRAME_PIXELS
    pair_width = 2 * framed + GRID_PADDING
    row, column = divmod(index, columns)
    top = PANEL_PADDING + row * (framed + PANEL_PADDING) + FRAME_PIXELS
    left = PANEL_PADDING + column * (pair_width + PANEL_PADDING) + framed + GRID_PADDING + FRAME_PIXELS
    return grid[top : top + PATCH, left : left + PATCH]


def expected_patch(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The box cut from ``image`` (``(C, H, W)``, C 1 or 3): grey outside, the inside min-max
    normalized, resized nearest to PATCH pixels, grey repeated to RGB."""
    top, left, bottom, right = box
    patch = np.full((bottom - top, right - left, 3), float(OUTSIDE))
    inner = image[:, max(top, 0) : min(bottom, SIZE), max(left, 0) : min(right, SIZE)]
    unit = np.rint((inner - inner.min()) / (inner.max() - inner.min()) * 255).transpose(1, 2, 0)
    patch[max(top, 0) - top : min(bottom, SIZE) - top, max(left, 0) - left : min(right, SIZE) - left] = unit
    rows = np.arange(PATCH) * (bottom - top) // PATCH
    cols = np.arange(PATCH) * (right - left) // PATCH
    return patch[rows][:, cols].astype(np.uint8)
