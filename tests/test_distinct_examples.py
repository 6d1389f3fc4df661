"""Dataset examples a person can read: distinct places, with context, on one scale, captioned.

The validation set is overlapping crops of two synthetic source images at known offsets
(and, in one test, an image twice): each example maps back to a place of a source image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import Classifier, FilterMonitor, pl, read_events, trainer_kwargs
from lightning_filterviz.core.tiles import FRAME_COLOUR, FRAME_PIXELS, GRID_PADDING, rgb_colour, to_uint8
from lightning_filterviz.drawing.example_images import (
    CAPTION_PIXELS,
    CHECKER_GREYS,
    CHECKER_PIXELS,
    OUTLINE_COLOUR,
    example_tiles,
    examples_grid,
)
from lightning_filterviz.drawing.text import text_mask

SOURCE, CROP, STEP = 80, 48, 8  # source images 80 px a side, crops of 48 every 8 px: heavy overlap
OFFSETS = [(top, left) for top in range(0, SOURCE - CROP + 1, STEP) for left in range(0, SOURCE - CROP + 1, STEP)]
K, FILTERS, SHIFT = 4, 6, 2
WINDOW = 32


def source_images() -> torch.Tensor:
    """Two smooth random RGB images: structure at a few pixels' scale, so places differ."""
    generator = torch.Generator().manual_seed(5)
    noise = torch.rand(2, 3, SOURCE + 8, SOURCE + 8, generator=generator)
    return F.avg_pool2d(noise, 5, stride=1)[..., 2 : 2 + SOURCE, 2 : 2 + SOURCE] * 4 - 2


def crops() -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """Every crop of both sources, and per dataset index ``(source, top, left)``."""
    sources, images, places = source_images(), [], []
    for source in range(len(sources)):
        for top, left in OFFSETS:
            images.append(sources[source, :, top : top + CROP, left : left + CROP])
            places.append((source, top, left))
    return torch.stack(images), places


class Crops(pl.LightningDataModule):
    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.data = TensorDataset(images, torch.zeros(len(images), dtype=torch.long))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=16)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=16)


def network() -> nn.Sequential:
    torch.manual_seed(11)
    return nn.Sequential(
        nn.Conv2d(3, FILTERS, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(FILTERS, 2)
    )


def fit(tmp_path: Path, images: torch.Tensor, net: nn.Module) -> tuple[FilterMonitor, Path]:
    monitor = FilterMonitor(probe_size=4, examples_k=K)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1, limit_train_batches=1))
    trainer.fit(Classifier(net, lr=0.0), datamodule=Crops(images))
    return monitor, Path(trainer.logger.log_dir)


def examples_file(log_dir: Path) -> dict[str, np.ndarray]:
    (path,) = (log_dir / "filterviz" / "history").glob("validation_examples_*.npz")
    with np.load(path, allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}


def same_place(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    return a[0] == b[0] and abs(a[1] - b[1]) <= SHIFT and abs(a[2] - b[2]) <= SHIFT


def test_examples_of_overlapping_crops_are_distinct_places_with_32_source_pixels_of_context(tmp_path):
    images, places = crops()
    net = network()
    # Each crop's strongest place per filter, strongest crops first: among the top K, places
    # repeat; among the 4 K candidates the monitor keeps, these are the distinct ones.
    with torch.no_grad():
        responses = net[1](net[0](images)).flatten(2)
    strongest, where = responses.max(dim=2)
    repeats, distinct = 0, []
    for f in range(FILTERS):
        ranked = [source_place(places[i], divmod(int(where[i, f]), CROP)) for i in strongest[:, f].topk(4 * K).indices.tolist()]
        repeats += sum(any(same_place(a, b) for b in ranked[:j]) for j, a in enumerate(ranked[:K]))
        distinct.append([])
        for place in ranked:
            if len(distinct[f]) < K and not any(same_place(place, other) for other in distinct[f]):
                distinct[f].append(place)
    assert repeats >= FILTERS, "the crops do not repeat places: this test would prove nothing"
    assert sum(len(places_of_filter) >= 2 for places_of_filter in distinct) >= FILTERS // 2

    monitor, log_dir = fit(tmp_path, images, net)
    arrays = examples_file(log_dir)
    sources = source_images()
    for f in range(FILTERS):
        listed = monitor.dataset_examples["net.0"][f]
        positions = monitor.dataset_example_positions["net.0"][f]
        assert [value for _, value in listed] == sorted((v for _, v in listed), reverse=True)
        found = [source_place(places[index], position) for (index, _), position in zip(listed, positions)]
        for j, place in enumerate(found):
            assert not any(same_place(place, other) for other in found[:j]), f"filter {f} shows {place} twice"
        assert found == distinct[f]  # every distinct place among the candidates, none lost
        # The history's tiles: 32 source pixels a side around each peak, on the filter's one scale.
        windows = [source_window(sources, places[index], position) for (index, _), position in zip(listed, positions)]
        low, high = min(w.min() for w in windows), max(w.max() for w in windows)
        for j, window in enumerate(windows):
            tile = arrays["net.0/patches"][f, j]
            assert tile.shape == (WINDOW, WINDOW, 3)
            outline = (tile == rgb_colour(OUTLINE_COLOUR)).all(axis=-1)
            expected = to_uint8((window - low) / (high - low)).transpose(1, 2, 0)
            difference = np.abs(tile.astype(int) - expected.astype(int))[~outline]
            assert difference.max() <= 1
            # The outline is a ring just around the 5x5 field at the peak (on the tile's edge where it ends).
            y, x = window_peak(positions[j])
            top, bottom = max(y - 3, 0), min(y + 3, WINDOW - 1)
            left, right = max(x - 3, 0), min(x + 3, WINDOW - 1)
            ring = np.zeros_like(outline)
            ring[[top, bottom], left : right + 1] = ring[top : bottom + 1, [left, right]] = True
            assert np.array_equal(outline, ring)
    # What the loggers showed is the history's tile, at twice its size, captioned.
    (grid,) = read_events(log_dir).images["filterviz/examples/net.0"].values()
    for f in range(FILTERS):
        for j, value in enumerate(arrays["net.0/values"][f]):
            shown = grid_tile(grid, f, j + 1)
            if np.isfinite(value):
                assert np.array_equal(shown, arrays["net.0/patches"][f, j].repeat(2, 0).repeat(2, 1))
                assert caption_shows(grid, f, j + 1, f"{j + 1} {value:.3g}")


def source_place(place: tuple[int, int, int], position: tuple[int, int]) -> tuple[int, int, int]:
    source, top, left = place
    return source, top + position[0], left + position[1]


def window_top_left(position: tuple[int, int]) -> tuple[int, int]:
    # Centred on the field's centre, moved inside the crop.
    return tuple(int(np.clip(centre - WINDOW // 2, 0, CROP - WINDOW)) for centre in position)  # type: ignore[return-value]


def window_peak(position: tuple[int, int]) -> tuple[int, int]:
    top, left = window_top_left(position)
    return position[0] - top, position[1] - left


def source_window(sources: torch.Tensor, place: tuple[int, int, int], position: tuple[int, int]) -> np.ndarray:
    source, crop_top, crop_left = place
    top, left = window_top_left(position)
    return sources[source, :, crop_top + top : crop_top + top + WINDOW, crop_left + left : crop_left + left + WINDOW].numpy()


def grid_tile(grid: np.ndarray, row: int, column: int, size: int = 2 * WINDOW) -> np.ndarray:
    top = GRID_PADDING + row * (size + 2 * FRAME_PIXELS + GRID_PADDING + CAPTION_PIXELS) + FRAME_PIXELS
    left = GRID_PADDING + column * (size + 2 * FRAME_PIXELS + GRID_PADDING) + FRAME_PIXELS
    return grid[top : top + size, left : left + size]


def caption_pixels(grid: np.ndarray, row: int, column: int, size: int = 2 * WINDOW) -> np.ndarray:
    top = GRID_PADDING + row * (size + 2 * FRAME_PIXELS + GRID_PADDING + CAPTION_PIXELS) + size + 2 * FRAME_PIXELS
    left = GRID_PADDING + column * (size + 2 * FRAME_PIXELS + GRID_PADDING)
    return grid[top : top + CAPTION_PIXELS, left : left + size + 2 * FRAME_PIXELS]


def caption_shows(grid: np.ndarray, row: int, column: int, text: str) -> bool:
    """Whether the strip below a tile shows ``text`` (nothing for ``""``), in the frame's grey."""
    inked = (caption_pixels(grid, row, column) == rgb_colour(FRAME_COLOUR)).all(axis=-1)
    expected = np.zeros_like(inked)
    if text:
        mask = text_mask(text)[: CAPTION_PIXELS - 1]
        expected[1 : 1 + mask.shape[0], : mask.shape[1]] = mask
    return bool(np.array_equal(inked, expected))


def test_an_image_repeated_under_another_index_is_one_example(tmp_path):
    images, _ = crops()
    images = images[:6]
    bright = images[2].clone()
    bright[:, 20:26, 20:26] = 3.0  # one place every filter with a positive weight sum fires on most
    images = torch.cat([images, bright[None], images[3:5], bright[None]])  # index 6 and 9: the same pixels
    net = network()
    with torch.no_grad():
        net[0].weight[0] = 0.05
    monitor, _ = fit(tmp_path, images, net)
    listed = [index for index, _ in monitor.dataset_examples["net.0"][0]]
    assert listed[0] in (6, 9) and len({6, 9} & set(listed)) == 1
    assert len(listed) == len(set(listed))


def test_the_outline_surrounds_the_field_and_outside_the_image_is_a_checkerboard():
    patches = np.full((1, 2, 3, 12, 12), np.nan, dtype=np.float32)
    patches[0, :, :, :, 4:] = np.linspace(0, 1, 8, dtype=np.float32)  # columns 0-3 outside the image
    boxes = np.array([[[5, 6, 3, 2], [0, 10, 4, 4]]])  # the second reaches past the window's corner
    tiles = example_tiles(patches, np.array([[True, True]]), boxes)
    outline = (tiles == rgb_colour(OUTLINE_COLOUR)).all(axis=-1)
    expected = np.zeros((12, 12), dtype=bool)
    expected[[4, 8], 5:9] = True
    expected[4:9, [5, 8]] = True
    assert np.array_equal(outline[0, 0], expected)
    corner = np.zeros((12, 12), dtype=bool)
    corner[[0, 4], 9:12] = True
    corner[0:5, [9, 11]] = True  # on the window's own edge where the field goes past it
    assert np.array_equal(outline[0, 1], corner)
    greys = to_uint8(np.array(CHECKER_GREYS))
    rows, columns = np.mgrid[0:12, 0:4]
    checker = greys[(rows // CHECKER_PIXELS + columns // CHECKER_PIXELS) % 2]
    assert (tiles[0, 0, :, :4] == checker[..., None]).all()
    assert len(set(greys.tolist())) == 2


def test_one_filter_s_examples_share_one_scale_and_a_brighter_one_is_brighter():
    patches = np.zeros((2, 3, 1, 32, 32), dtype=np.float32)
    patches[0, :, 0] = np.array([0.2, 0.5, 0.8])[:, None, None]  # three flat examples of filter 0
    patches[1, :, 0] = np.array([10.0, 10.0, 10.0])[:, None, None]  # filter 1: all alike
    tiles = example_tiles(patches, np.ones((2, 3), dtype=bool), np.tile([14, 14, 3, 3], (2, 3, 1)))
    corner = tiles[:, :, 0, 0, 0]  # far from the outline
    assert corner[0].tolist() == [0, 128, 255]  # not each stretched to black or white on its own
    assert corner[1].tolist() == [128, 128, 128]  # flat everywhere: mid grey


def test_the_legend_names_the_filter_and_each_example_s_rank_and_value():
    weight = np.random.default_rng(1).normal(size=(1, 3, 5, 5)).astype(np.float32)
    patches = np.random.default_rng(2).random((1, 3, 3, 32, 32)).astype(np.float32)
    found = np.array([[True, True, False]])
    values = np.array([[12.5, 3.25, -np.inf]])
    grid = examples_grid(weight, True, example_tiles(patches, found, np.tile([14, 14, 5, 5], (1, 3, 1))), values)
    for column, text in ((0, "filter 0"), (1, "1 12.5"), (2, "2 3.25"), (3, "")):
        assert caption_shows(grid, 0, column, text), text
    assert (grid_tile(grid, 0, 3) == 255).all()  # no third example: blank


@pytest.mark.parametrize("value", [123456.0, -0.000123])
def test_a_long_value_is_shortened_to_fit_below_its_tile(value):
    patches = np.zeros((1, 1, 3, 32, 32), dtype=np.float32)
    grid = examples_grid(np.ones((1, 3, 3, 3), np.float32), True, example_tiles(patches, np.array([[True]])), np.array([[value]]))
    inked = (caption_pixels(grid, 0, 1) == rgb_colour(FRAME_COLOUR)).all(axis=-1)
    assert inked[:, : 2 * WINDOW].any() and not inked[:, 2 * WINDOW :].any()
