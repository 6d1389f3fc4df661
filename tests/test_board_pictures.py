"""The Filters tab's pictures are cut from the renderer's own grids: a filter's frame has the
pixels of its tile in the run's images, and the history files are read the same way as
``numpy.load`` reads them."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_filterviz.board.npz import read_arrays, read_rows
from lightning_filterviz.drawing.filter_frames import feature_vis_sprite, maps_sprite, weights_sprite
from lightning_filterviz.core.tiles import square_columns, tile_origin
from lightning_filterviz.drawing.render import SIGNED_COLORMAP, activation_grid, activation_tile, weight_grid


def _tile_of(grid: np.ndarray, index: int, count: int, tile: tuple[int, int]) -> np.ndarray:
    top, left = tile_origin(index, tile[0], tile[1], square_columns(count))
    return grid[top : top + tile[0], left : left + tile[1]]


@pytest.mark.parametrize("signed", [False, True])
def test_a_maps_frame_is_its_tile_in_the_layers_grid(signed):
    generator = np.random.default_rng(0)
    maps = generator.normal(size=(6, 5, 5)).astype(np.float32)
    maps[2] = 0.0  # a silent channel stays silent on the layer's range
    maps[4, 1, 1] = np.nan
    grid = activation_grid(maps[None], signed=signed).to_rgb()
    for channel in range(len(maps)):
        tile = activation_tile(maps, channel, signed=signed)
        np.testing.assert_array_equal(tile, _tile_of(grid, channel, len(maps), tile.shape[:2]), err_msg=str(channel))
    sprite = maps_sprite([maps, maps * 2], 4, signed)
    height, width = sprite.tile
    colormap = SIGNED_COLORMAP if signed else "viridis"  # a conv's output before any activation: around zero
    expected = activation_tile(maps * 2, 4, colormap, signed=signed)
    np.testing.assert_array_equal(sprite.image[:height, width : 2 * width], expected)


def test_a_weights_frame_is_the_filters_tile_in_the_layers_grid():
    generator = np.random.default_rng(1)
    snapshots = generator.normal(size=(7, 5, 3, 3, 3)).astype(np.float32)  # 7 snapshots of 5 RGB filters
    sprite = weights_sprite(snapshots[:, 3])
    height, width = sprite.tile
    assert sprite.image.shape == (height, 7 * width, 3)
    for step, filters in enumerate(snapshots):
        grid = weight_grid(filters)
        frame = sprite.image[:, step * width : (step + 1) * width]
        np.testing.assert_array_equal(frame, _tile_of(grid, 3, len(filters), (height, width)), err_msg=str(step))


def test_the_fast_reader_reads_what_numpy_reads(tmp_path):
    arrays = {
        "format": np.array("lightning_filterviz.history/1"),
        "step": np.array(12, dtype=np.int64),
        "layers": np.array(["a", "b/c"]),
        "b/c/maps": np.arange(24, dtype=np.float16).reshape(2, 3, 4),
        "b/c/fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "b/c/empty": np.zeros((0, 3), dtype=np.int64),
    }
    path = tmp_path / "step_00000012.npz"
    np.savez(path, **arrays)
    found, names = read_arrays(path, [*arrays, "missing"])
    assert names == frozenset(arrays)
    for key, value in arrays.items():
        assert found[key].dtype == value.dtype and found[key].shape == value.shape, key
        np.testing.assert_array_equal(found[key], value, err_msg=key)
    compressed = tmp_path / "compressed.npz"
    np.savez_compressed(compressed, **arrays)  # not what the monitor writes: numpy reads it
    np.testing.assert_array_equal(read_arrays(compressed, ["b/c/maps"])[0]["b/c/maps"], arrays["b/c/maps"])
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError):
        read_arrays(tmp_path / "cut.npz", ["step"])


def test_the_row_reader_reads_one_row_of_what_numpy_reads(tmp_path):
    arrays = {
        "step": np.array(3, dtype=np.int64),
        "layers": np.array(["a", "b/c"]),
        "b/c/images": np.random.default_rng(2).integers(0, 256, size=(4, 5, 6, 3), dtype=np.uint8),
        "b/c/fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    }
    path = tmp_path / "feature_vis_00000003.npz"
    np.savez(path, **arrays)
    found, names = read_rows(path, ("step", "layers", "missing"), {"b/c/images": 2, "b/c/fortran": 1})
    assert names == frozenset(arrays) and set(found) == {"step", "layers", "b/c/images", "b/c/fortran"}
    assert int(found["step"]) == 3 and found["layers"].tolist() == ["a", "b/c"]
    np.testing.assert_array_equal(found["b/c/images"], arrays["b/c/images"][2])
    np.testing.assert_array_equal(found["b/c/fortran"], arrays["b/c/fortran"][1])  # read by numpy
    assert read_rows(path, rows={"b/c/images": 4})[0] == {} and read_rows(path, rows={"step": 0})[0] == {}
    compressed = tmp_path / "compressed.npz"
    np.savez_compressed(compressed, **arrays)
    np.testing.assert_array_equal(read_rows(compressed, rows={"b/c/images": 1})[0]["b/c/images"], arrays["b/c/images"][1])
    whole = path.read_bytes()
    for cut in (0, 100, len(whole) // 2, len(whole) - 40):
        (tmp_path / "cut.npz").write_bytes(whole[:cut])
        with pytest.raises(ValueError):
            read_rows(tmp_path / "cut.npz", ("step",), {"b/c/images": 0})


def test_a_feature_vis_frame_is_the_picture_grey_ones_in_three_channels_smaller_ones_enlarged():
    generator = np.random.default_rng(3)
    colour = generator.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    grey = generator.integers(0, 256, size=(8, 8, 1), dtype=np.uint8)
    small = generator.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    sprite = feature_vis_sprite([colour, grey, small], gap=2, columns=2)
    assert sprite.tile == (8, 8) and sprite.columns == 2 and sprite.image.shape == (18, 18, 3)
    np.testing.assert_array_equal(sprite.image[:8, :8], colour)
    np.testing.assert_array_equal(sprite.image[:8, 10:], np.repeat(grey, 3, axis=-1))
    np.testing.assert_array_equal(sprite.image[10:, :8], small.repeat(2, axis=0).repeat(2, axis=1))
    assert (sprite.image[8:10] == 255).all() and (sprite.image[10:, 10:] == 255).all()
