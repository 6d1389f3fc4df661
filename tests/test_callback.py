"""FilterMonitor inside a Trainer: tags, steps, sizes, dead filters, cadences, probe sources, sinks."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import (
    Classifier,
    FilterMonitor,
    NoValidation,
    RandomImages,
    count_hooks,
    pl,
    read_events,
    trainer_kwargs,
)
from lightning_filterviz.views.registry import logged_tags
from lightning_filterviz.core.tiles import FRAME_PIXELS, GRID_PADDING

LAYERS = ["net.0", "net.3"]
STEPS_PER_EPOCH = 4  # 32 training samples in batches of 8


def fit(tmp_path: Path, monitor: FilterMonitor, model=None, data=None, **trainer_overrides) -> pl.Trainer:
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, **trainer_overrides))
    trainer.fit(model if model is not None else Classifier(), datamodule=data if data is not None else RandomImages())
    return trainer


def plant_dead_filters(model: Classifier) -> None:
    """net.0 -> BN -> ReLU: BN weight 0, bias -1e4 kills channel 1; net.3 -> ReLU: conv bias -1e4 kills channel 2."""
    with torch.no_grad():
        model.net[1].weight[1] = 0.0
        model.net[1].bias[1] = -1e4
        model.net[3].bias[2] = -1e4


def pattern_of(tag: str) -> str:
    """The described tag a written one stands for: ``<layer>`` or ``<i>`` at its end."""
    if tag.startswith("filterviz/through_the_layers/"):
        return "filterviz/through_the_layers/<i>"
    parts = tag.split("/")
    return "/".join(parts[:2] + ["<layer>"]) if len(parts) > 2 else tag


def documented_kind(tag: str) -> str | None:
    return next((each.kind for each in logged_tags() if each.tag == pattern_of(tag)), None)


def grid_size(tiles: int, tile_pixels: int) -> tuple[int, int]:
    columns = int(np.ceil(np.sqrt(tiles)))
    rows = int(np.ceil(tiles / columns))
    cell = tile_pixels + 2 * FRAME_PIXELS + GRID_PADDING
    return GRID_PADDING + rows * cell, GRID_PADDING + columns * cell


def test_every_contract_tag_at_step_zero_and_later_with_planted_dead_filters(tmp_path):
    model = Classifier(lr=0.01)
    plant_dead_filters(model)
    hooks_before = count_hooks(model)
    monitor = FilterMonitor(max_images=2, featvis_layers=["net.0"])  # feature visualization is opt-in
    trainer = fit(tmp_path, monitor, model, max_epochs=2)

    events = read_events(trainer.logger.log_dir)
    assert set(events.images["filterviz/feature_vis/net.0"]) == {STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH}
    expected_steps = {0, STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH}
    for layer in LAYERS:
        assert set(events.images[f"filterviz/weights/{layer}"]) == expected_steps
        assert set(events.images[f"filterviz/activations/{layer}"]) == expected_steps
        assert set(events.scalars[f"filterviz/dead_fraction/{layer}"]) == expected_steps
    assert set(events.texts["filterviz/dead_filters"]) == expected_steps
    # The tags written are those the docstrings and README describe, each of the kind they say.
    written = {
        **{tag: "image" for tag in events.images},
        **{tag: "scalar" for tag in events.scalars},
        **{tag: "text" for tag in events.texts},
    }
    ours = {tag: kind for tag, kind in written.items() if tag.startswith("filterviz/")}
    assert {tag: documented_kind(tag) for tag in ours} == ours
    assert {pattern_of(tag) for tag in ours} == {each.tag for each in logged_tags()}

    # Image sizes: 6 RGB 3x3 filters upscaled to 24 px in a 3-column grid; 8 in a 3-column grid.
    assert events.images["filterviz/weights/net.0"][0].shape == (*grid_size(6, 24), 3)
    assert events.images["filterviz/weights/net.3"][0].shape == (*grid_size(8, 24), 3)
    # Feature maps: 12x12 maps upscaled by 3 to reach 32 px (36), one panel per probe image (2 drawn).
    panel_height, panel_width = grid_size(6, 36)
    assert events.images["filterviz/activations/net.0"][0].shape == (panel_height + 12, 2 * panel_width + 18, 3)

    assert monitor.dead_filters == {"net.0": [1], "net.3": [2]}
    last = 2 * STEPS_PER_EPOCH
    assert events.scalars["filterviz/dead_fraction/net.0"][0] == 0.0  # patience 2: not dead yet
    assert events.scalars["filterviz/dead_fraction/net.0"][last] == pytest.approx(1 / 6)
    assert events.scalars["filterviz/dead_fraction/net.3"][last] == pytest.approx(1 / 8)
    assert "| net.0 | 1 / 6 | 1 |" in events.texts["filterviz/dead_filters"][last]
    assert "| net.3 | 1 / 8 | 2 |" in events.texts["filterviz/dead_filters"][last]
    assert "| net.0 | 0 / 6 | none |" in events.texts["filterviz/dead_filters"][0]
    assert count_hooks(model) == hooks_before

    # The planted channels are the only ones off on the probe at the final weights.
    reference = model.net.eval()
    with torch.no_grad():
        first = torch.relu(reference[1](reference[0](monitor.probe[0])))
        second = torch.relu(reference[3](first))
    assert torch.nonzero(first.amax(dim=(0, 2, 3)) <= 0).flatten().tolist() == [1]
    assert torch.nonzero(second.amax(dim=(0, 2, 3)) <= 0).flatten().tolist() == [2]


def test_first_snapshot_shows_the_random_init(tmp_path):
    model = Classifier()
    initial = model.net[0].weight.detach().clone()
    monitor = FilterMonitor(every_n_steps=100)
    trainer = fit(tmp_path, monitor, model, max_epochs=1)
    step_zero = read_events(trainer.logger.log_dir).images["filterviz/weights/net.0"][0]
    from lightning_filterviz.drawing.render import weight_grid

    assert np.array_equal(step_zero, weight_grid(initial))  # RGB filters: an (H, W, 3) array
    assert not torch.equal(model.net[0].weight, initial)


def test_step_cadence(tmp_path):
    trainer = fit(tmp_path, FilterMonitor(every_n_steps=3), max_epochs=2)
    events = read_events(trainer.logger.log_dir)
    assert set(events.images["filterviz/weights/net.0"]) == {0, 3, 6, 8}  # and the trained state at the end


def test_epoch_cadence(tmp_path):
    trainer = fit(tmp_path, FilterMonitor(every_n_epochs=2), max_epochs=3)
    events = read_events(trainer.logger.log_dir)
    assert set(events.images["filterviz/weights/net.0"]) == {0, 2 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH}  # and the end


def test_sanity_check_and_validate_take_no_snapshot(tmp_path, monkeypatch):
    calls = []
    monitor = FilterMonitor(every_n_steps=2)
    original = monitor.engine.snapshot

    def spy(model, batch, step, **kwargs):
        calls.append((step, trainer.sanity_checking))
        return original(model, batch, step, **kwargs)

    monkeypatch.setattr(monitor.engine, "snapshot", spy)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1, num_sanity_val_steps=2))
    model, data = Classifier(), RandomImages()
    trainer.fit(model, datamodule=data)
    assert calls == [(0, False), (2, False), (4, False)]
    calls.clear()
    trainer.validate(model, datamodule=data)
    assert calls == []


def test_fast_dev_run_produces_nothing(tmp_path):
    monitor = FilterMonitor(every_n_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # and no warning from the monitor
        warnings.filterwarnings("ignore", message=r"(?!filterviz)")
        fit(tmp_path, monitor, fast_dev_run=True)
    assert monitor.dead_filters == {}
    assert monitor.probe is None
    assert not [path for path in tmp_path.rglob("*") if "filterviz" in path.name or path.name.startswith("events")]


def test_without_tensorboard_logger_png_files_and_scalars_are_written(tmp_path):
    model = Classifier()
    plant_dead_filters(model)
    trainer = fit(tmp_path, FilterMonitor(every_n_steps=4), model, max_epochs=1, logger=pl.loggers.CSVLogger(str(tmp_path)))
    root = Path(trainer.log_dir) / "filterviz"
    for layer in LAYERS:
        for kind in ("weights", "activations"):
            files = sorted(path.name for path in (root / kind / layer).iterdir())
            assert files == ["step_00000000.png", "step_00000004.png"]
    image = np.asarray(Image.open(root / "weights/net.0/step_00000000.png"))
    assert image.shape == (*grid_size(6, 24), 3)
    rows = (root / "scalars.csv").read_text().splitlines()
    assert rows[0] == "step,tag,value"
    assert "4,filterviz/dead_fraction/net.3,0.125" in rows
    assert "net.3 | 1 / 8 | 2" in (root / "text.md").read_text()


def test_no_logger_at_all_writes_under_default_root_dir(tmp_path):
    fit(tmp_path, FilterMonitor(every_n_steps=100), max_epochs=1, logger=False)
    assert (tmp_path / "filterviz/weights/net.0/step_00000000.png").is_file()


def test_probe_comes_from_validation_set_by_default(tmp_path):
    data = RandomImages()
    monitor = FilterMonitor(probe_size=5, every_n_steps=100)
    fit(tmp_path, monitor, data=data, max_epochs=1)
    images, labels = monitor.probe
    assert torch.equal(images, data.val_set.tensors[0][:5]) and torch.equal(labels, data.val_set.tensors[1][:5])


def test_probe_from_training_set_on_request_or_without_validation(tmp_path):
    data = RandomImages()
    monitor = FilterMonitor(probe_size=3, probe_split="train", every_n_steps=100)
    fit(tmp_path, monitor, data=data, max_epochs=1)
    assert torch.equal(monitor.probe[0], data.train_set.tensors[0][:3])

    data = RandomImages()
    monitor = FilterMonitor(probe_size=3, every_n_steps=100)
    fit(tmp_path / "noval", monitor, NoValidation(), data=data, max_epochs=1)
    assert torch.equal(monitor.probe[0], data.train_set.tensors[0][:3])


def test_probe_given_as_a_tensor(tmp_path):
    probe = torch.randn(10, 3, 12, 12)
    monitor = FilterMonitor(probe=probe, probe_size=4, every_n_steps=100, max_images=4)
    trainer = fit(tmp_path, monitor, max_epochs=1)
    assert torch.equal(monitor.probe, probe[:4])
    probe_image = read_events(trainer.logger.log_dir).images["filterviz/probe"][0]
    assert probe_image.shape[1] == 2 + 4 * (12 + 2)  # the 4 probe images side by side


def test_probe_from_dict_batches_needs_batch_key(tmp_path):
    data = RandomImages(dict_items=True)
    monitor = FilterMonitor(batch_key="image", every_n_steps=100)
    fit(tmp_path, monitor, Classifier(dict_batches=True), data=data, max_epochs=1)
    assert torch.equal(monitor.probe["image"], data.val_set.images[:8])

    model = Classifier(dict_batches=True)
    with pytest.raises(ValueError, match="set `batch_key`"):
        fit(tmp_path / "nokey", FilterMonitor(), model, data=RandomImages(dict_items=True), max_epochs=1)
    assert model.global_step == 0


def test_layers_by_name_and_pattern(tmp_path):
    trainer = fit(tmp_path, FilterMonitor(layers=["net.3"], every_n_steps=100), max_epochs=1)
    images = read_events(trainer.logger.log_dir).images
    assert {tag for tag in images if tag.startswith("filterviz/weights")} == {"filterviz/weights/net.3"}

    trainer = fit(tmp_path / "pattern", FilterMonitor(layers=["net.*"], every_n_steps=100), max_epochs=1)
    images = read_events(trainer.logger.log_dir).images
    assert {tag for tag in images if tag.startswith("filterviz/weights")} == {f"filterviz/weights/{n}" for n in LAYERS}


def test_unknown_layer_fails_before_any_training_step(tmp_path):
    model = Classifier()
    with pytest.raises(ValueError, match=r"'net\.30' matches no module.*'net\.3'"):
        fit(tmp_path, FilterMonitor(layers=["net.30"]), model)
    assert model.global_step == 0


def test_model_without_conv_warns_once_and_trains(tmp_path):
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 3))
    model = Classifier(net)
    with pytest.warns(UserWarning, match="no nn.Conv2d layer") as record:
        fit(tmp_path, FilterMonitor(every_n_steps=1), model, max_epochs=1)
    assert len([w for w in record if "filterviz" in str(w.message)]) == 1
    assert model.global_step == STEPS_PER_EPOCH


def test_a_layer_past_half_dead_warns_once(tmp_path):
    model = Classifier()
    with torch.no_grad():
        model.net[3].bias[:5] = -1e4
    with pytest.warns(UserWarning, match=r"62% of the filters of `net.3` are dead") as record:
        fit(tmp_path, FilterMonitor(every_n_steps=1), model, max_epochs=1)
    assert len([w for w in record if "are dead" in str(w.message)]) == 1


def test_many_snapshots_warn_about_tensorboard_sampling(tmp_path):
    with pytest.warns(UserWarning, match="samples_per_plugin images=1000"):
        fit(tmp_path, FilterMonitor(every_n_steps=1), max_epochs=3)


def test_with_a_csv_logger_first_the_history_lies_beside_the_tensorboard_images_and_both_dirs_find_it(tmp_path):
    from lightning_filterviz import build_report

    loggers = [pl.loggers.CSVLogger(str(tmp_path), name="csv"), pl.loggers.TensorBoardLogger(str(tmp_path), name="tb")]
    kwargs = trainer_kwargs(tmp_path, max_epochs=1, logger=loggers)
    trainer = pl.Trainer(callbacks=[FilterMonitor(every_n_steps=2)], **kwargs)
    trainer.fit(Classifier(), datamodule=RandomImages())
    tensorboard_dir = Path(loggers[1].log_dir)
    assert "filterviz/weights/net.0" in read_events(tensorboard_dir).images
    assert sorted(path.name for path in (tensorboard_dir / "filterviz" / "history").iterdir())[0] == "step_00000000.npz"
    assert build_report(tensorboard_dir).is_file()
    csv_dir = Path(loggers[0].log_dir)  # the report finds the run's history from the other logger's directory too
    pages = [build_report(path).read_text() for path in (csv_dir, tensorboard_dir)]
    pictures = [re.findall(r"data:image/png;base64,([^\"]+)", page) for page in pages]
    assert pictures[0] and pictures[0] == pictures[1]


def test_the_schedule_takes_each_step_once_waits_for_lazy_weights_and_gives_other_ranks_one_snapshot():
    from lightning_filterviz.integration.snapshot_schedule import SnapshotSchedule

    schedule = SnapshotSchedule(every_n_epochs=None, every_n_steps=3)
    assert [step for step in range(10) if schedule.due_after_batch(step)] == [0, 3, 6, 9]
    assert not any(schedule.due_after_epoch(epoch) for epoch in range(4))
    rank_zero = dict(global_zero=True, needs_rank_plan=False)
    assert not schedule.take(0, **rank_zero, lazy_weights=True) and schedule.waiting_for_weights
    assert schedule.take(0, **rank_zero, lazy_weights=False) and not schedule.waiting_for_weights
    assert not schedule.take(0, **rank_zero, lazy_weights=False)  # once per step
    assert schedule.take(3, **rank_zero, lazy_weights=False) and schedule.last_step == 3

    other_rank = SnapshotSchedule(every_n_epochs=2, every_n_steps=None)
    assert [epoch for epoch in range(6) if other_rank.due_after_epoch(epoch)] == [1, 3, 5]
    assert not other_rank.take(0, global_zero=False, needs_rank_plan=False, lazy_weights=False)
    assert other_rank.take(0, global_zero=False, needs_rank_plan=True, lazy_weights=False)
    assert not other_rank.take(5, global_zero=False, needs_rank_plan=True, lazy_weights=False)  # one plan only
    other_rank.restart()
    assert other_rank.take(5, global_zero=False, needs_rank_plan=True, lazy_weights=False)
