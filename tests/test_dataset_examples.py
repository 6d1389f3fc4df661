"""Dataset examples: the validation images each filter fires on most, over the whole validation set."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import Classifier, FilterMonitor, count_hooks, in_the_outline, pl, read_events, trainer_kwargs
from lightning_filterviz.drawing.example_images import (
    CAPTION_PIXELS,
    CHECKER_GREYS,
    OUTLINE_COLOUR,
    example_tiles,
    examples_grid,
)
from lightning_filterviz.core.tiles import FRAME_PIXELS, GRID_PADDING, rgb_colour, to_uint8

PLANTED = {7: (2, 9), 23: (10, 3), 41: (6, 6)}  # dataset index -> top-left of a 4x4 pure red square
SQUARE = 4
IMAGES, SIZE, BATCH = 48, 16, 8
K = 5


def planted_detector() -> nn.Sequential:
    """Filter 0 of the first conv fires on pure red (R - G - B over 3x3, minus 1) and on
    nothing grey; the other filters are random."""
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )
    with torch.no_grad():
        net[0].weight[0] = torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, 3, 3)
        net[0].bias[0] = -1.0
    return net


def grey_textures_with_red_squares() -> TensorDataset:
    generator = torch.Generator().manual_seed(3)
    images = (torch.rand(IMAGES, 1, SIZE, SIZE, generator=generator) * 0.8).repeat(1, 3, 1, 1)
    for index, (top, left) in PLANTED.items():
        images[index, :, top : top + SQUARE, left : left + SQUARE] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    return TensorDataset(images, torch.randint(0, 3, (IMAGES,), generator=generator))


class PlantedData(pl.LightningDataModule):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(grey_textures_with_red_squares(), batch_size=BATCH)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(grey_textures_with_red_squares(), batch_size=BATCH)


def fit_planted(tmp_path, monitor, model=None, **overrides):
    model = model if model is not None else Classifier(planted_detector(), lr=0.0)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, **{"max_epochs": 1, **overrides}))
    trainer.fit(model, datamodule=PlantedData())
    return model, trainer


def test_the_planted_red_square_detector_lists_exactly_the_three_images_first(tmp_path):
    monitor = FilterMonitor(probe_size=4, examples_k=K)  # the probe is images 0-3: no red square
    model, trainer = fit_planted(tmp_path, monitor)
    examples = monitor.dataset_examples["net.0"]
    assert len(examples) == 4 and all(len(row) == K for row in examples)
    first_three = examples[0][:3]
    assert sorted(index for index, _ in first_three) == sorted(PLANTED)
    assert all(value == pytest.approx(8.0) for _, value in first_three)  # 9 red pixels - 1
    assert all(value == 0.0 for _, value in examples[0][3:])  # nothing else fires
    for (index, _), (y, x) in zip(first_three, monitor.dataset_example_positions["net.0"][0]):
        top, left = PLANTED[index]
        assert top <= y < top + SQUARE and left <= x < left + SQUARE
    # The row of filter 0 in the image: its tile, then examples 1-3, pure red where the field is.
    image = read_events(trainer.logger.log_dir).images["filterviz/examples/net.0"][trainer.global_step]
    for column in (1, 2, 3):
        assert (in_the_outline(tile(image, row=0, column=column, columns=K + 1)) == [255, 0, 0]).all()


def tile(image: np.ndarray, row: int, column: int, columns: int, size: int = 64) -> np.ndarray:
    """The picture of one tile of a captioned grid (its frame and caption left out)."""
    step_x = size + 2 * FRAME_PIXELS + GRID_PADDING
    step_y = step_x + CAPTION_PIXELS
    top, left = GRID_PADDING + row * step_y + FRAME_PIXELS, GRID_PADDING + column * step_x + FRAME_PIXELS
    assert image.shape[1] == GRID_PADDING + columns * step_x
    return image[top : top + size, left : left + size]


def test_no_hook_is_left_after_validation_even_when_a_validation_step_raises(tmp_path):
    counts = []

    class Counting(pl.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            counts.append(count_hooks(pl_module))

    class FailingValidation(Classifier):
        def validation_step(self, batch, batch_idx):
            if batch_idx == 2:
                raise RuntimeError("validation broke")
            return super().validation_step(batch, batch_idx)

    monitor = FilterMonitor(probe_size=4, examples_k=K)
    model = Classifier(planted_detector(), lr=0.0)
    before = count_hooks(model)
    trainer = pl.Trainer(callbacks=[monitor, Counting()], **trainer_kwargs(tmp_path, max_epochs=2))
    trainer.fit(model, datamodule=PlantedData())
    assert counts == [before, before] and count_hooks(model) == before
    failing = FailingValidation(planted_detector(), lr=0.0)
    with pytest.raises(RuntimeError, match="validation broke"):
        pl.Trainer(callbacks=[FilterMonitor(probe_size=4)], **trainer_kwargs(tmp_path, max_epochs=1)).fit(
            failing, datamodule=PlantedData()
        )
    assert count_hooks(failing) == before


def test_validation_metrics_are_bitwise_equal_with_and_without_the_monitor(tmp_path):
    class Recording(pl.Callback):
        def __init__(self):
            self.losses = []

        def on_validation_epoch_end(self, trainer, pl_module):
            self.losses.append(trainer.callback_metrics["val_loss"].clone())

    runs = []
    for monitored in (False, True):
        torch.manual_seed(0)
        recording = Recording()
        callbacks = [recording] + ([FilterMonitor(probe_size=4, examples_k=K, every_n_steps=2)] if monitored else [])
        trainer = pl.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path / str(monitored), max_epochs=2))
        trainer.fit(Classifier(planted_detector(), lr=0.05), datamodule=PlantedData())
        runs.append(recording.losses)
    assert len(runs[0]) == 2 and all(torch.equal(a, b) for a, b in zip(*runs))


def test_examples_layers_off_collects_nothing(tmp_path):
    monitor = FilterMonitor(probe_size=4, examples_layers=[])
    _, trainer = fit_planted(tmp_path, monitor)
    assert monitor.dataset_examples == {}
    assert "filterviz/examples/net.0" not in read_events(trainer.logger.log_dir).images


def test_a_second_fit_of_the_same_model_and_data_has_examples_from_its_first_validation_run(tmp_path):
    # The same objects: the monitor carries on (no fresh start), and its first snapshot in the
    # second fit draws no views (nor does any later one); the receptive fields are measured there all the same.
    model, data = Classifier(planted_detector(), lr=0.0), PlantedData()
    monitor = FilterMonitor(probe_size=4, every_n_steps=2, examples_k=K, views_every=50)
    for fit in range(2):
        trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path / f"fit{fit}", max_epochs=2))
        trainer.fit(model, datamodule=data)
        steps_per_epoch = trainer.global_step // 2
        examples = read_events(trainer.logger.log_dir).images["filterviz/examples/net.0"]
        assert sorted(examples) == [steps_per_epoch, 2 * steps_per_epoch]
    assert sorted(index for index, _ in monitor.dataset_examples["net.0"][0][:3]) == sorted(PLANTED)


def test_a_shuffled_validation_loader_gives_no_dataset_indices_but_the_examples_still_work(tmp_path):
    class ShuffledData(PlantedData):
        def val_dataloader(self):
            return DataLoader(grey_textures_with_red_squares(), batch_size=BATCH, shuffle=True)

    monitor = FilterMonitor(probe_size=4, examples_k=K)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(Classifier(planted_detector(), lr=0.0), datamodule=ShuffledData())
    first_three = monitor.dataset_examples["net.0"][0][:3]
    assert [index for index, _ in first_three] == [None, None, None]
    assert all(value == pytest.approx(8.0) for _, value in first_three)


def test_examples_grid_draws_a_filter_then_its_examples_and_leaves_missing_ones_blank():
    weight = np.random.default_rng(0).normal(size=(2, 3, 3, 3)).astype(np.float32)
    patches = np.zeros((2, 3, 3, 32, 32), dtype=np.float32)
    patches[:, :, 0] = 1.0  # red
    patches[:, :, :, :, :8] = np.nan  # outside the image
    found = np.array([[True, True, False], [True, False, False]])
    values = np.where(found, 1.0, -np.inf)
    boxes = np.tile([14, 14, 3, 3], (2, 3, 1))
    image = examples_grid(weight, True, example_tiles(patches, found, boxes), values)  # 32-pixel windows at 64
    drawn = tile(image, 0, 1, 4)
    assert (in_the_outline(drawn) == [255, 0, 0]).all()
    assert (drawn[:, 16:] != rgb_colour(OUTLINE_COLOUR)).any(axis=-1).sum() > 40 * 48  # red beyond the outline
    greys = {(grey,) * 3 for grey in to_uint8(np.array(CHECKER_GREYS)).tolist()}
    assert {tuple(colour) for colour in drawn[:, :16].reshape(-1, 3).tolist()} == greys  # checkerboard outside
    assert (tile(image, 0, 3, 4) == 255).all()  # no third example: blank


def test_under_ddp_rank_zero_gathers_both_shards_examples(tmp_path):
    """The three planted images are all odd indices: a DistributedSampler gives them to rank 1."""
    assert all(index % 2 == 1 for index in PLANTED)
    monitor = FilterMonitor(probe_size=4, examples_k=K)
    kwargs = trainer_kwargs(tmp_path, max_epochs=1, devices=2, strategy="ddp_spawn")
    pl.Trainer(callbacks=[monitor], **kwargs).fit(Classifier(planted_detector(), lr=0.0), datamodule=PlantedData())
    log_dir = tmp_path / "tb" / "version_0"
    (path,) = (log_dir / "filterviz" / "history").glob("validation_examples_*.npz")
    with np.load(path, allow_pickle=False) as arrays:
        indices, values = arrays["net.0/indices"], arrays["net.0/values"]
    assert sorted(indices[0, :3].tolist()) == sorted(PLANTED) and values[0, :3] == pytest.approx([8.0] * 3)
    assert len(set(indices[0].tolist())) == K  # each sample once, though the ranks' shards were padded
    image = read_events(log_dir).images["filterviz/examples/net.0"]
    (grid,) = image.values()
    assert (in_the_outline(tile(grid, row=0, column=1, columns=K + 1)) == [255, 0, 0]).all()


def test_merging_ranks_keeps_each_sample_once_strongest_first():
    from lightning_filterviz.capture.dataset_examples import merge_ranks
    from lightning_filterviz.core.records import LayerExamples

    values = torch.tensor([[[5.0, 3.0, 1.0]], [[4.0, 3.0, float("-inf")]]])  # 2 ranks, 1 filter, k=3
    indices = torch.tensor([[[10, 12, 14]], [[11, 12, -1]]])  # sample 12 seen by both ranks
    gathered = LayerExamples(
        values, indices, torch.zeros(2, 1, 3, 2, dtype=torch.long), torch.zeros(2, 1, 3, 1, 2, 2), torch.zeros(2, 1, 3, 4)
    )
    merged = merge_ranks(gathered)  # 3 slots, from the shape
    assert merged.indices.tolist() == [[10, 11, 12]] and merged.values.tolist() == [[5.0, 4.0, 3.0]]


@pytest.mark.parametrize("pack_cpu", [False, True], ids=["each tensor", "packed as for a GPU"])
def test_gathered_examples_are_merged_where_their_copy_arrives(pack_cpu):
    from lightning_filterviz.capture.dataset_examples import InFlightExamples
    from lightning_filterviz.core.records import LayerExamples

    values = torch.tensor([[[5.0, 3.0]], [[4.0, 3.0]]])  # 2 ranks, 1 filter, k=2
    indices = torch.tensor([[[10, 12]], [[2**40, 11]]])  # an index no float32 holds exactly
    positions = torch.tensor([[[[1, 2], [3, 4]]], [[[5, 6], [7, 8]]]])
    gathered = LayerExamples(values, indices, positions, torch.zeros(2, 1, 2, 1, 2, 2), torch.zeros(2, 1, 2, 4))
    examples, _ = InFlightExamples({"net.0": gathered}, {}, gathered=True, pack_cpu=pack_cpu).wait()
    merged = examples["net.0"]
    assert merged.indices.tolist() == [[10, 2**40]] and merged.values.tolist() == [[5.0, 4.0]]
    assert merged.positions.tolist() == [[[1, 2], [5, 6]]]


def test_gathering_refuses_a_strategy_that_does_not_stack_the_ranks():
    from lightning_filterviz.core.records import LayerExamples
    from lightning_filterviz.integration.validation_examples import gathered_examples

    class Concatenating:
        def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
            return torch.cat([tensor, tensor])

    values, indices = torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.long)
    found = LayerExamples(
        values, indices, torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 1, 2, 2), torch.zeros(1, 2, 4)
    )
    with pytest.raises(ValueError, match="did not stack the ranks"):
        gathered_examples({"net.0": found}, Concatenating())


def test_the_report_shows_a_filters_examples_at_each_validation_run(tmp_path):
    import base64
    import io
    import re

    from PIL import Image

    from lightning_filterviz import build_report
    from lightning_filterviz.report.runs import load_runs

    monitor = FilterMonitor(probe_size=4, examples_k=K)
    _, trainer = fit_planted(tmp_path, monitor, max_epochs=2)
    (run,) = load_runs(trainer.logger.log_dir)
    assert [record.step for record in run.examples] == [6, 12]
    page = build_report(trainer.logger.log_dir).read_text()
    section = page[page.index("Dataset examples: net.0, filter 0") :]
    assert "steps 6, 12" in section and all(str(index) in section for index in PLANTED)
    uri = re.search(r'src="data:image/png;base64,([^"]+)"', section)[1]
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri))).convert("RGB"))
    for row in (0, 1):  # each validation run's row starts with the three red squares
        for column in range(3):
            assert (in_the_outline(tile(image, row, column, K)) == [255, 0, 0]).all()


class NoMaximum(torch.Tensor):
    """A tensor type without a maximum, as a tensor subclass may lack an op: ``amax`` and
    ``max`` raise, every other op works and gives this type again."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("amax", "max"):
            raise RuntimeError("no maximum for this tensor type")
        return super().__torch_function__(func, types, args, kwargs or {})


class ValidatesOnTensorsWithoutMaximum(Classifier):
    """Validates on its images as a tensor type without a maximum (the probe stays plain):
    the hooks collecting examples genuinely fail inside the validation forward."""

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        self.log("val_loss", F.cross_entropy(self(images.as_subclass(NoMaximum)).as_subclass(torch.Tensor), labels))


def images_of_the_probe_only(failures: list) -> Callable[[Any], Any]:
    """A ``batch_key`` that finds the images in the probe (4 images) and fails on the
    validation batches (8), noting each failure in ``failures``."""

    def images(batch: Any) -> Any:
        if len(batch[0]) != 4:
            failures.append(len(batch[0]))
            raise IndexError("no images in this batch")
        return batch[0]

    return images


@pytest.mark.parametrize("where", ["inside the forward", "before it"])
def test_a_failure_while_collecting_costs_the_examples_not_the_run(where, tmp_path):
    failures: list = []
    if where == "inside the forward":
        model = ValidatesOnTensorsWithoutMaximum(planted_detector(), lr=0.0)
        monitor = FilterMonitor(probe_size=4, examples_k=K)
        cause = "RuntimeError: no maximum for this tensor type"
    else:
        model = Classifier(planted_detector(), lr=0.0)
        monitor = FilterMonitor(probe_size=4, examples_k=K, batch_key=images_of_the_probe_only(failures))
        cause = "IndexError: no images in this batch"
    before = count_hooks(model)
    with pytest.warns(UserWarning, match=f"collecting dataset examples failed: {cause}") as caught:
        _, trainer = fit_planted(tmp_path, monitor, model=model, max_epochs=2)
    assert trainer.current_epoch == 2 and count_hooks(model) == before
    # Once per validation run: nothing more is tried in a run after a failure.
    assert sum("collecting dataset examples failed" in str(warning.message) for warning in caught) == 2
    assert len(failures) == (2 if where == "before it" else 0)
    assert monitor.dataset_examples == {}
    assert "filterviz/examples/net.0" not in read_events(trainer.logger.log_dir).images
