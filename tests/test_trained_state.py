"""Every view at its trained state: whatever the cadence and however `fit` ends, each image a
run draws at its first step is drawn at its last one too, and that last look counts in no
statistic."""

from __future__ import annotations

import signal
from typing import Any, Mapping

import numpy as np
import pytest
import torch
from torch import nn

from conftest import read_events
from lightning_filterviz import FilterVisualizer, Sink
from lightning_filterviz.core.png import EncodedImage


def _example_fit(tmp_path, ending: str) -> tuple[Any, dict[str, dict[int, np.ndarray]]]:
    """The README example's model, data and monitor at its default arguments, smoke-sized."""
    import lightning.pytorch as lightning_pl
    from cnn_example import ImageClassifier, PhotoPatches

    from lightning_filterviz.lightning import FilterMonitor

    class StopByHand(lightning_pl.Callback):
        def on_train_batch_end(self, trainer, *args: Any) -> None:
            if trainer.global_step == 5:
                raise KeyboardInterrupt  # Ctrl-C: Lightning shuts down gracefully

    lightning_pl.seed_everything(0)
    endings = {"max_epochs": {}, "max_steps": {"max_steps": 4}, "interrupt": {"callbacks": [StopByHand()]}}
    extra = dict(endings[ending])
    callbacks = [FilterMonitor(), *extra.pop("callbacks", [])]
    trainer = lightning_pl.Trainer(
        default_root_dir=str(tmp_path),
        logger=lightning_pl.loggers.TensorBoardLogger(str(tmp_path), name="tb"),
        max_epochs=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        accelerator="cpu",
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **extra,
    )
    data = PhotoPatches(patch_size=32, train_patches=6, val_patches=2, batch_size=16)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit(ImageClassifier(), datamodule=data)
    except SystemExit:  # after a graceful shutdown on Ctrl-C, Lightning exits with status 1
        assert ending == "interrupt"
    finally:
        signal.signal(signal.SIGINT, sigint)  # which that shutdown set to be ignored
    return trainer, read_events(trainer.logger.log_dir).images


@pytest.mark.parametrize("ending", ["max_epochs", "max_steps", "interrupt"])
def test_every_image_of_the_first_step_is_drawn_at_the_last_step(tmp_path, ending):
    trainer, images = _example_fit(tmp_path, ending)
    last = trainer.global_step
    assert last == {"max_epochs": 6, "max_steps": 4, "interrupt": 5}[ending]  # 3 batches per epoch
    at_first = {tag for tag, by_step in images.items() if 0 in by_step}
    assert {"filterviz/weights/net.0", "filterviz/responses/net.0", "filterviz/through_the_layers/0"} <= at_first
    assert {tag for tag in at_first if last not in images[tag]} == set()
    # The views are of the trained state, not a copy of the start.
    assert not np.array_equal(images["filterviz/responses/net.0"][0], images["filterviz/responses/net.0"][last])


class RecordingSink(Sink):
    """Every batched call the publisher makes, in order."""

    takes_images = True

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, tuple[str, ...]]] = []

    def add_images(self, images: Mapping[str, EncodedImage], step: int) -> None:
        self.calls.append(("images", step, tuple(sorted(images))))

    def add_scalars(self, values: Mapping[str, float], step: int) -> None:
        self.calls.append(("scalars", step, tuple(sorted(values))))


def test_the_last_look_draws_the_views_and_counts_in_no_statistic():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    probe = torch.rand(2, 3, 8, 8)
    sink = RecordingSink()
    visualizer = FilterVisualizer(sink, dead_patience=2, views_every=100, background=True)
    for step in (0, 10, 20):  # views at the 1st and 2nd snapshot, not at the 3rd
        with torch.no_grad():
            model[0].bias[1] = -100.0 if step == 20 else 0.0  # filter 1 off at the last snapshot only
        visualizer.snapshot(model, probe, step)
    visualizer.finish(20, model, probe)
    visualizer.close()

    assert visualizer.dead_filters == {"0": []}  # off at one snapshot: the last look did not count twice
    at_20 = [call for call in sink.calls if call[1] == 20]
    assert sum(kind == "scalars" for kind, _, _ in at_20) == 1
    drawn_at_20 = {tag for kind, _, tags in at_20 if kind == "images" for tag in tags}
    assert {"filterviz/responses/0", "filterviz/through_the_layers/0", "filterviz/drift_strip/0"} <= drawn_at_20
    assert {"filterviz/weights/0", "filterviz/activations/0"} <= drawn_at_20
    weights_calls = [call for call in at_20 if call[0] == "images" and "filterviz/weights/0" in call[2]]
    assert len(weights_calls) == 1  # the snapshot's own images are not drawn again


def test_a_later_end_takes_one_more_snapshot_with_every_view(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    probe = torch.rand(2, 3, 8, 8)
    visualizer = FilterVisualizer(str(tmp_path), views_every=100)
    for step in (0, 10, 20):
        visualizer.snapshot(model, probe, step)
    with torch.no_grad():
        model[0].weight.mul_(-1.0)  # trained on after the last snapshot
    visualizer.finish(25, model, probe)
    visualizer.close()
    for view in ("weights", "responses", "drift_strip", "filmstrip"):
        assert (tmp_path / view / "0" / "step_00000025.png").exists(), view
    assert not (tmp_path / "responses" / "0" / "step_00000020.png").exists()


def test_the_last_look_completes_the_last_snapshots_history_file_with_the_trained_maps(tmp_path):
    from lightning_filterviz import load_history

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    probe = torch.rand(2, 3, 8, 8)
    history = tmp_path / "history"
    visualizer = FilterVisualizer(RecordingSink(), history_dir=str(history), views_every=100)
    for step in (0, 10, 20):
        visualizer.snapshot(model, probe, step)
    visualizer.flush()
    before = load_history(history / "step_00000020.npz")
    assert "0/maps" not in before  # the 3rd snapshot does not draw the views
    visualizer.finish(20, model, probe)
    visualizer.close()

    files = sorted(path.name for path in history.iterdir())
    assert files == ["step_00000000.npz", "step_00000010.npz", "step_00000020.npz"]  # no copy, nothing half-written
    after = load_history(history / "step_00000020.npz")
    with torch.no_grad():
        trained_maps = model(probe)[0].numpy().astype(np.float16)
    np.testing.assert_array_equal(after["0/maps"], trained_maps)
    assert set(after) == set(before) | {"0/maps"}
    for key, value in before.items():  # the statistics are the snapshot's own
        np.testing.assert_array_equal(after[key], value, err_msg=key)
