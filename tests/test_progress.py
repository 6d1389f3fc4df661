"""Learning progress: drift, filmstrips and the history on disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import Classifier, FilterMonitor, RandomImages, conv_bn_relu_stack, pl, read_events, trainer_kwargs
from lightning_filterviz import FilterVisualizer
from lightning_filterviz.core.history import HISTORY_FORMAT, HISTORY_PATTERN, load_history
from lightning_filterviz.state.progress import filter_drift
from lightning_filterviz.drawing.render import FILMSTRIP_TILE_PIXELS, drift_strip, filmstrip


def test_drift_of_an_unchanged_filter_is_zero_and_of_a_negated_one_is_two():
    initial = torch.randn(4, 3, 3, 3)
    now = initial.clone()
    now[1] = -initial[1]
    now[2] = initial[2] * 5.0  # grew, same direction: no drift
    now[3] = initial[3] + torch.randn(3, 3, 3)  # turned part of the way
    drift = filter_drift(now, initial)
    assert drift[0].item() == pytest.approx(0.0, abs=1e-6)
    assert drift[1].item() == pytest.approx(2.0, abs=1e-6)
    assert drift[2].item() == pytest.approx(0.0, abs=1e-6)
    assert 0.01 < drift[3].item() < 1.99


def test_drift_and_norm_through_the_engine(tmp_path):
    model = conv_bn_relu_stack()
    visualizer = FilterVisualizer(str(tmp_path))
    probe = torch.randn(2, 3, 8, 8)
    visualizer.snapshot(model, probe, 0)
    with torch.no_grad():
        model[0].weight[0] *= -1.0
        model[0].weight[1] *= 3.0
    snapshot = visualizer.snapshot(model, probe, 1)
    assert snapshot.drift["0"][0].item() == pytest.approx(2.0, abs=1e-5)
    assert snapshot.drift["0"][1:].abs().max().item() == pytest.approx(0.0, abs=1e-5)
    assert snapshot.weight_norm_ratio["0"][1].item() == pytest.approx(3.0, rel=1e-5)
    assert snapshot.drift["3"].abs().max().item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("background", [False, True])
def test_drift_strips_come_with_the_views_and_for_the_last_snapshot(tmp_path, background):
    model = conv_bn_relu_stack()
    visualizer = FilterVisualizer(str(tmp_path), views_every=5, background=background)
    probe = torch.randn(2, 3, 8, 8)
    snapshots = []
    for step in range(6):  # views at the 1st, 2nd, 4th and 5th snapshot, not the 3rd and 6th
        with torch.no_grad():
            model[0].weight.mul_(-1.0 if step == 5 else 1.5)
        snapshots.append(visualizer.snapshot(model, probe, step * 10).result())
    visualizer.finish(55)  # without the model: the last snapshot's strips, at its own step
    visualizer.close()

    folder = tmp_path / "drift_strip" / "0"
    drawn_at = (0, 10, 30, 40, 50)
    assert sorted(path.name for path in folder.iterdir()) == [f"step_{step:08d}.png" for step in drawn_at]
    last = snapshots[-1]
    expected = drift_strip(last.drift["0"].numpy(), last.weight_norm_ratio["0"].numpy()).to_rgb()
    drawn = np.asarray(Image.open(folder / "step_00000050.png").convert("RGB"))
    np.testing.assert_array_equal(drawn, expected)
    assert last.drift["0"].min().item() == pytest.approx(2.0, abs=1e-5)  # negated: the strip is not trivial

    visualizer.finish(60)  # a second end adds nothing new
    visualizer.close()
    assert len(list(folder.iterdir())) == len(drawn_at)


def test_filmstrip_has_one_row_per_snapshot():
    rows = [np.full((5, 3, 3, 3), value, dtype=np.uint8) for value in (0, 100, 200)]
    image = filmstrip(rows)
    tile = 3 * 4  # 3x3 kernels upscaled by 4 to reach 12 pixels
    assert FILMSTRIP_TILE_PIXELS == tile
    assert image.shape == (3 * (tile + 2), 1 + 5 * (tile + 1), 3)
    for row, value in enumerate((0, 100, 200)):
        top = row * (tile + 2) + 1
        assert (image[top : top + tile, 1 : 1 + tile] == value).all()


def test_filmstrip_in_tensorboard_grows_with_the_run(tmp_path):
    monitor = FilterMonitor(every_n_steps=1, views_every=2)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(Classifier(), datamodule=RandomImages())
    events = read_events(trainer.logger.log_dir)
    strips = events.images["filterviz/filmstrip/net.0"]
    # The 1st, 2nd and 4th snapshot (steps 0, 1, 3) and, at the end, the trained state at step 4.
    assert sorted(strips) == [0, 1, 3, 4]
    row_height = FILMSTRIP_TILE_PIXELS + 2  # 3x3 kernels at 12 pixels, with the gaps
    assert [strips[step].shape[0] // row_height for step in (0, 1, 3, 4)] == [1, 2, 4, 5]
    assert sorted(events.images["filterviz/responses/net.0"]) == [0, 1, 3, 4]
    assert sorted(events.images["filterviz/through_the_layers/0"]) == [0, 1, 3, 4]
    assert "filterviz/filmstrip/net.3" not in events.images  # only the first conv by default
    for step in range(5):
        assert step in events.scalars["filterviz/drift/net.0"]
    # Drift strips come with the views, and the end adds those of the last snapshot (step 4).
    assert sorted(events.images["filterviz/drift_strip/net.0"]) == [0, 1, 3, 4]
    assert events.scalars["filterviz/drift/net.0"][0] == pytest.approx(0.0, abs=1e-6)
    assert events.scalars["filterviz/drift/net.0"][4] > 0.0


def test_history_npz_files_load_without_pickle_and_round_trip(tmp_path):
    model = Classifier()
    with torch.no_grad():
        model.net[3].bias[2] = -1e4
    monitor = FilterMonitor(every_n_steps=2, dead_patience=1)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1))
    snapshots = []
    original = monitor.engine.snapshot
    monitor.engine.snapshot = lambda *args, **kwargs: snapshots.append(original(*args, **kwargs).result()) or snapshots[-1]
    trainer.fit(model, datamodule=RandomImages())

    files = sorted((tmp_path / "tb" / "version_0" / "filterviz" / "history").glob(HISTORY_PATTERN))
    assert [path.name for path in files] == ["step_00000000.npz", "step_00000002.npz", "step_00000004.npz"]
    for path, snapshot in zip(files, snapshots):
        with np.load(path, allow_pickle=False) as raw:
            assert "format" in raw.files
        arrays = load_history(path)
        assert str(arrays["format"]) == HISTORY_FORMAT and int(arrays["step"]) == snapshot.step
        assert list(arrays["layers"]) == ["net.0", "net.3"]
        layer = snapshot.layers["net.0"]
        np.testing.assert_array_equal(arrays["net.0/filters"], layer.weight.numpy())
        np.testing.assert_array_equal(arrays["net.0/channel_max"], layer.channel_max.numpy())
        # Views (and the maps with them) at the 1st, 2nd, 4th ... snapshot; the end of fit's
        # look at the trained model adds them to the last snapshot's file (same weights, same probe).
        np.testing.assert_array_equal(arrays["net.0/maps"], layer.maps[0].numpy().astype(np.float16))
        np.testing.assert_array_equal(arrays["net.0/drift"], snapshot.drift["net.0"].numpy())
        assert arrays["net.3/dead"].tolist() == [2] and int(arrays["net.3/out_channels"]) == 8


def test_a_foreign_npz_file_is_refused(tmp_path):
    np.savez(tmp_path / "step_00000000.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a lightning_filterviz history file"):
        load_history(tmp_path / "step_00000000.npz")


def test_progress_state_survives_a_checkpoint(tmp_path):
    first = FilterMonitor(every_n_steps=2)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    model = Classifier()
    kwargs = trainer_kwargs(tmp_path, max_epochs=1, enable_checkpointing=True)
    pl.Trainer(callbacks=[first, checkpoint], **kwargs).fit(model, datamodule=RandomImages())
    resumed = FilterMonitor(every_n_steps=2)
    pl.Trainer(callbacks=[resumed], **trainer_kwargs(tmp_path, max_epochs=2)).fit(
        Classifier(), datamodule=RandomImages(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    assert len(resumed.engine.state.progress.filmstrip_rows("net.0")) == 3 + 2  # steps 0, 2, 4, then 6, 8
    torch.testing.assert_close(
        resumed.engine.state.progress.state_dict()["initial"]["net.0"], first.engine.state.progress.state_dict()["initial"]["net.0"]
    )
