"""The monitor never harms the run: invariance, resume, compile, precision, fail-soft."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conftest import (
    REPO,
    Classifier,
    FilterMonitor,
    RandomImages,
    conv_bn_relu_stack,
    count_hooks,
    failing_view,
    pl,
    read_events,
    registered,
    trainer_kwargs,
)
from lightning_filterviz import DirectorySink, sink_for_logger
from lightning_filterviz.integration.probe_storage import rebuilt_probe


def dropout_bn_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Dropout2d(0.3),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


class AdamClassifier(Classifier):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01)


def train_once(tmp_path: Path, with_monitor: bool, **monitor_arguments: Any) -> tuple[dict, dict, list[bool]]:
    pl.seed_everything(7)
    model = AdamClassifier(dropout_bn_net())
    model.net[1].eval()  # a user's frozen BatchNorm, which must stay frozen
    monitor = FilterMonitor(every_n_steps=2, probe_split="train", probe_size=4, **monitor_arguments)
    callbacks = [monitor] if with_monitor else []
    trainer = pl.Trainer(callbacks=callbacks, **trainer_kwargs(tmp_path, max_epochs=2))
    trainer.fit(model, datamodule=RandomImages())
    modes = [module.training for module in model.modules()]
    return model.state_dict(), trainer.optimizers[0].state_dict(), modes


@pytest.mark.parametrize("featvis_layers", [(), ["net.0", "net.4"]], ids=["default", "feature-vis"])
def test_training_result_is_bitwise_identical_with_and_without_the_monitor(tmp_path, featvis_layers):
    state_without, optimizer_without, modes_without = train_once(tmp_path / "without", with_monitor=False)
    state_with, optimizer_with, modes_with = train_once(
        tmp_path / "with", with_monitor=True, featvis_layers=featvis_layers
    )
    images = read_events(tmp_path / "with" / "tb" / "version_0").images
    assert images  # the monitor did run
    if featvis_layers:  # at the end of each of the two validation runs
        for layer in featvis_layers:
            assert sorted(images[f"filterviz/feature_vis/{layer}"]) == [4, 8]
    assert state_with.keys() == state_without.keys()
    for key in state_with:  # parameters and buffers (BatchNorm running statistics too)
        assert torch.equal(state_with[key], state_without[key]), key
    for index, state in optimizer_without["state"].items():
        for name, value in state.items():
            assert torch.equal(optimizer_with["state"][index][name], value), (index, name)
    assert modes_with == modes_without
    assert modes_with[3] is False  # the frozen BatchNorm (after the module itself, net and the conv)


def test_resume_keeps_probe_patience_and_logs_no_step_twice(tmp_path):
    model = Classifier()
    with torch.no_grad():
        model.net[3].bias[2] = -1e4
    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="tb", version=0)
    first = FilterMonitor(dead_patience=3)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    kwargs = trainer_kwargs(tmp_path, max_epochs=1, logger=logger, enable_checkpointing=True)
    pl.Trainer(callbacks=[first, checkpoint], **kwargs).fit(model, datamodule=RandomImages())
    assert first.dead_filters["net.3"] == []  # off at steps 0 and 4: two of three

    # Resume on other data: the probe must be the stored one, not one from the new data.
    resumed = FilterMonitor(dead_patience=3)
    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="tb", version=0)
    kwargs = trainer_kwargs(tmp_path, max_epochs=2, logger=logger, enable_checkpointing=True)
    other_data = RandomImages()
    other_data.val_set = RandomImages(val=16).train_set
    pl.Trainer(callbacks=[resumed], **kwargs).fit(
        Classifier(), datamodule=other_data, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    assert torch.equal(resumed.probe[0], first.probe[0])
    assert resumed.dead_filters["net.3"] == [2]  # the third off snapshot, counted across the restart

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"images": 0})
    accumulator.Reload()
    steps = Counter(event.step for event in accumulator.Images("filterviz/weights/net.0"))
    assert steps == Counter({0: 1, 4: 1, 8: 1})


def test_checkpoint_without_monitor_state_loads_with_a_warning(tmp_path):
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    kwargs = trainer_kwargs(tmp_path, max_epochs=1, enable_checkpointing=True)
    pl.Trainer(callbacks=[checkpoint], **kwargs).fit(Classifier(), datamodule=RandomImages())
    monitor = FilterMonitor()
    with pytest.warns(UserWarning, match="holds no state for this FilterMonitor"):
        pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=2)).fit(
            Classifier(), datamodule=RandomImages(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
        )
    assert monitor.probe is not None


def test_two_monitors_keep_separate_state(tmp_path):
    every_two = FilterMonitor(every_n_steps=2)
    second_layer = FilterMonitor(layers=["net.3"], probe_split="train", probe_size=2)
    assert every_two.state_key != second_layer.state_key
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    kwargs = trainer_kwargs(tmp_path, max_epochs=1, enable_checkpointing=True)
    pl.Trainer(callbacks=[every_two, second_layer, checkpoint], **kwargs).fit(Classifier(), datamodule=RandomImages())
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["callbacks"]
    assert saved[every_two.state_key]["last_snapshot_step"] == 4
    assert saved[second_layer.state_key]["last_snapshot_step"] == 4
    assert len(rebuilt_probe(saved[every_two.state_key]["probe"])[0]) == 8
    assert len(rebuilt_probe(saved[second_layer.state_key]["probe"])[0]) == 2


class CompiledSubmodule(Classifier):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.compile(self.net, backend="eager")


def test_compiled_model_gets_the_same_snapshots_as_eager(tmp_path):
    eager = Classifier()
    compiled = CompiledSubmodule()
    compiled.net._orig_mod.load_state_dict(eager.net.state_dict())
    probe = torch.randn(4, 3, 12, 12)
    results = {}
    for name, model in (("eager", eager), ("compiled", compiled)):
        monitor = FilterMonitor(probe=probe, every_n_steps=2)
        trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path / name, max_epochs=1, max_steps=1))
        trainer.fit(model, datamodule=RandomImages())
        results[name] = read_events(trainer.logger.log_dir).images
    assert set(results["compiled"]) == set(results["eager"])
    assert "filterviz/weights/net.0" in results["compiled"]
    assert not any("_orig_mod" in tag for tag in results["compiled"])
    for tag in ("filterviz/weights/net.0", "filterviz/activations/net.0", "filterviz/activations/net.3"):
        assert np.array_equal(results["compiled"][tag][0], results["eager"][tag][0]), tag


def test_snapshots_of_a_compiled_model_trigger_no_compilation(tmp_path):
    from torch._dynamo.utils import counters

    from lightning_filterviz import FilterVisualizer

    torch._dynamo.reset()
    model = torch.compile(conv_bn_relu_stack(), backend="eager")
    model(torch.randn(8, 3, 12, 12))  # compiled once, as training does
    compiled_before = dict(counters["stats"])
    visualizer = FilterVisualizer(str(tmp_path))
    for step in range(3):
        snapshot = visualizer.snapshot(model, torch.randn(4, 3, 10, 10), step)
    assert dict(counters["stats"]) == compiled_before
    assert list(snapshot.layers) == ["0", "3"]
    assert all(layer.maps is not None for layer in snapshot.layers.values())


def test_bf16_mixed_gives_finite_images_and_right_dead_flags(tmp_path):
    model = Classifier()
    with torch.no_grad():
        model.net[3].bias[1] = -1e4
    monitor = FilterMonitor(every_n_steps=2)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1, precision="bf16-mixed"))
    trainer.fit(model, datamodule=RandomImages())
    assert monitor.dead_filters == {"net.0": [], "net.3": [1]}
    events = read_events(trainer.logger.log_dir)
    activations = events.images["filterviz/activations/net.0"][4]
    assert activations.std() > 0  # real feature maps, not a blank or NaN-filled grid


def test_channels_last_model_works(tmp_path):
    model = Classifier().to(memory_format=torch.channels_last)
    monitor = FilterMonitor(every_n_steps=2)
    trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1))
    trainer.fit(model, datamodule=RandomImages())
    assert set(read_events(trainer.logger.log_dir).images["filterviz/weights/net.0"]) == {0, 2, 4}


def test_a_failing_renderer_warns_once_and_training_finishes(tmp_path):
    model = Classifier()
    with torch.no_grad():
        model.net[3].bias[1] = -1e4
    monitor = FilterMonitor(every_n_steps=1)
    with registered(failing_view("renderer broke")), pytest.warns(UserWarning, match="RuntimeError: renderer broke") as record:
        pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=2)).fit(model, datamodule=RandomImages())
    assert len([w for w in record if "renderer broke" in str(w.message)]) == 1
    assert model.global_step == 8
    assert monitor.dead_filters["net.3"] == [1]  # statistics went on after writing stopped


class FullDiskCSVLogger(pl.loggers.CSVLogger):
    """A CSVLogger on a disk that is full by the time the monitor writes its PNG files."""


@sink_for_logger("FullDiskCSVLogger")
class FullDiskPNGFiles(DirectorySink):
    """The PNG files beside that logger: writing any of them fails as on a full disk."""

    @classmethod
    def from_logger(cls, logger):
        return cls(Path(logger.log_dir) / "filterviz")

    def add_images(self, images, step):
        raise OSError(28, "No space left on device")  # ENOSPC


def test_a_full_disk_under_the_png_sink_warns_once_and_training_finishes(tmp_path):
    model = Classifier()
    logger = FullDiskCSVLogger(str(tmp_path))
    with pytest.warns(UserWarning, match="No space left on device") as record:
        pl.Trainer(callbacks=[FilterMonitor(every_n_steps=1)], **trainer_kwargs(tmp_path, logger=logger)).fit(
            model, datamodule=RandomImages()
        )
    assert len([w for w in record if "No space left" in str(w.message)]) == 1
    assert model.global_step == 8


def test_a_failing_probe_pass_at_run_time_warns_and_switches_off(tmp_path):
    calls = []

    def forward_that_breaks_later(module, inputs):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("probe pass broke")
        return module(inputs)

    model = Classifier()
    monitor = FilterMonitor(every_n_steps=1, forward_fn=forward_that_breaks_later, response_layers=[], examples_layers=[])
    with pytest.warns(UserWarning, match="failed, so FilterMonitor is off.*probe pass broke"):
        pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1)).fit(model, datamodule=RandomImages())
    assert model.global_step == 4 and len(calls) == 2


def test_non_finite_weights_and_activations_render_and_are_marked(tmp_path):
    from lightning_filterviz.core.tiles import FRAME_PIXELS, NON_FINITE_COLOUR, tile_origin

    model = conv_bn_relu_stack()
    with torch.no_grad():
        model[0].weight[1, 0, 0, 0] = float("nan")
    from lightning_filterviz import FilterVisualizer

    visualizer = FilterVisualizer(str(tmp_path), max_images=1)
    visualizer.snapshot(model, torch.randn(2, 3, 8, 8), step=0)
    from PIL import Image

    magenta = [round(255 * c) for c in NON_FINITE_COLOUR]
    weights = np.asarray(Image.open(tmp_path / "weights/0/step_00000000.png"))
    top, left = tile_origin(1, 24, 24, nrow=3)
    assert list(weights[top - FRAME_PIXELS, left]) == magenta
    activations = np.asarray(Image.open(tmp_path / "activations/0/step_00000000.png").convert("RGB"))
    top, left = tile_origin(1, 32, 32, nrow=3)
    assert list(activations[top - FRAME_PIXELS, left]) == magenta  # channel 1's maps are NaN too


def test_sharded_strategies_are_refused_with_one_warning(tmp_path):
    class FSDPStrategy:  # stands in for Lightning's: only the class name is looked at
        pass

    class Trainer:
        fast_dev_run = False
        strategy = type("MyFSDP", (FSDPStrategy,), {})()

    monitor = FilterMonitor()
    with pytest.warns(UserWarning, match="does not support the sharded strategy MyFSDP"):
        monitor.setup(Trainer(), Classifier(), "fit")
    assert not monitor._enabled


ONLY_ONE_PACKAGE = """
import sys
sys.modules[{blocked!r}] = None  # as if it were not installed
import lightning_filterviz
from lightning_filterviz import FilterMonitor
import {present} as present
assert issubclass(FilterMonitor, present.Callback), FilterMonitor.__mro__
assert {blocked!r} not in [name.split(".")[0] for name, module in sys.modules.items() if module is not None]
print("ok")
"""


@pytest.mark.parametrize(("present", "blocked"), [("lightning.pytorch", "pytorch_lightning"), ("pytorch_lightning", "lightning")])
def test_a_user_with_only_one_lightning_package_is_not_asked_for_the_other(present, blocked):
    code = ONLY_ONE_PACKAGE.format(present=present, blocked=blocked)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr


PLAIN_SCRIPT = """
import sys, tempfile, torch
from lightning_filterviz import FilterVisualizer
model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
FilterVisualizer(tempfile.mkdtemp()).snapshot(model, torch.randn(2, 3, 8, 8), step=0)
print(sorted({name for name in sys.modules if name.split(".")[0] in ("lightning", "pytorch_lightning")}))
"""


def test_the_engine_works_in_a_plain_script_and_imports_no_lightning_package():
    result = subprocess.run([sys.executable, "-c", PLAIN_SCRIPT], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_autocast_gives_float32_statistics_and_right_dead_flags(dtype, tmp_path):
    """The engine under CPU autocast (Lightning refuses 16-mixed on CPU, so drive it directly)."""
    from lightning_filterviz import FilterVisualizer

    model = conv_bn_relu_stack()
    with torch.no_grad():
        model[3].bias[4] = -1e4
    visualizer = FilterVisualizer(str(tmp_path), dead_patience=1)
    snapshot = visualizer.snapshot(
        model, torch.randn(2, 3, 8, 8), 0, forward_context=lambda: torch.autocast("cpu", dtype=dtype)
    )
    layer = snapshot.layers["3"]
    assert layer.channel_max.dtype == torch.float32 and layer.maps.dtype == torch.float32
    assert torch.isfinite(layer.maps).all() and torch.isfinite(layer.channel_mean_abs).all()
    assert visualizer.dead_filters["3"] == [4]


class TwoPrecisionsOneConv(nn.Module):
    """One conv called twice, each time through its own BatchNorm: under the caller's
    autocast, then in float32 (a part the model keeps out of autocast)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norms = nn.Conv2d(4, 4, 3, padding=1), nn.ModuleList(nn.BatchNorm2d(4) for _ in range(2))

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.norms[0](self.conv(x)))
        with torch.autocast("cpu", enabled=False):
            return torch.relu(self.norms[1](self.conv(x.float())))


def test_tracking_a_conv_whose_calls_differ_in_dtype_under_autocast(tmp_path):
    from lightning_filterviz import FilterVisualizer

    model = TwoPrecisionsOneConv()
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    visualizer = FilterVisualizer(str(tmp_path))
    visualizer.snapshot(model, torch.randn(2, 4, 8, 8), 0, forward_context=autocast)
    model.train()
    with visualizer.training_batch(model), autocast():
        model(torch.randn(2, 4, 8, 8))
    snapshot = visualizer.snapshot(model, torch.randn(2, 4, 8, 8), 1, forward_context=autocast)
    visualizer.close()
    assert snapshot.layers["conv"].training_max.dtype == torch.float32
    assert snapshot.layers["conv"].training_max.shape == (4,)


def tensor_type_without_maximum(refused: list[str]) -> type[Tensor]:
    """A tensor subclass that has no maximum, as a tensor subclass may lack an op: ``amax``,
    ``max`` and their kin raise (each refusal noted in ``refused``); every other op works and
    gives that type again. Watching a training forward on such tensors fails inside it."""

    class NoMaximum(Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if name in ("amax", "max", "aminmax", "maximum", "fmax"):
                refused.append(name)
                raise RuntimeError(f"no {name} for this tensor type")
            return super().__torch_function__(func, types, args, kwargs or {})

    return NoMaximum


class TrainsOnTensorsWithoutMaximum(Classifier):
    """Trains on its images as a tensor type without a maximum (the probe stays plain)."""

    def __init__(self, tensor_type: type[Tensor]) -> None:
        super().__init__()
        self.tensor_type = tensor_type

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return F.cross_entropy(self(images.as_subclass(self.tensor_type)), labels)


def test_a_failure_inside_a_training_forward_switches_tracking_off_not_the_run(tmp_path):
    refused: list[str] = []
    model = TrainsOnTensorsWithoutMaximum(tensor_type_without_maximum(refused))
    before = count_hooks(model)
    monitor = FilterMonitor(every_n_steps=2, track_training_batches=True)
    with pytest.warns(UserWarning, match="watching training batches failed.*RuntimeError: no amax") as caught:
        trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1))
        trainer.fit(model, datamodule=RandomImages())
    assert sum("watching training batches failed" in str(warning.message) for warning in caught) == 1
    assert len(refused) == 1  # the first failure stops every later hook, and every later step's
    assert count_hooks(model) == before
    dead = read_events(trainer.logger.log_dir).scalars["filterviz/dead_fraction/net.0"]
    assert len(dead) > 2 and max(dead) == trainer.global_step  # snapshots went on to the end


class FunctionalNorm(nn.Module):
    """A functional batch norm between the conv and its ReLU: only the tracer follows it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        norm = self.norm
        return torch.relu(F.batch_norm(self.conv(x), norm.running_mean, norm.running_var, norm.weight, norm.bias))


def test_a_failure_of_the_tracer_inside_a_training_forward_leaves_the_forward_as_it_was(tmp_path):
    from lightning_filterviz import FilterVisualizer

    model = FunctionalNorm().eval()
    visualizer = FilterVisualizer(str(tmp_path))
    visualizer.snapshot(model, torch.randn(2, 3, 8, 8), 0)
    refused: list[str] = []
    batch = torch.randn(4, 3, 8, 8)
    unreducible = batch.as_subclass(tensor_type_without_maximum(refused))  # the tracer's reductions fail on it
    expected = model(batch)
    with pytest.warns(UserWarning, match="watching training batches failed.*RuntimeError: no amax"):
        with visualizer.training_batch(model):
            got = model(unreducible)
    assert torch.equal(got, expected) and len(refused) == 1
    with visualizer.training_batch(model):  # off for good: nothing is traced any more
        assert torch.equal(model(unreducible), expected)
    assert len(refused) == 1
    visualizer.snapshot(model, torch.randn(2, 3, 8, 8), 1)  # a plain probe: the probe pass traces as before
    visualizer.close()
    assert visualizer.dead_filters.keys() == {"conv"}


class QuantizedInput(Classifier):
    """Rounds its input to steps of 1/16 before the network: no gradient reaches the input,
    so no receptive field can be measured by gradient (the weights still train)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.net(torch.round(x * 16) / 16)


def test_a_failing_receptive_field_measurement_only_skips_the_peak_patches(tmp_path):
    monitor = FilterMonitor(every_n_steps=2)
    with pytest.warns(UserWarning, match="no peak patches for `net.0`: ValueError: .* zero gradient w.r.t. every input"):
        trainer = pl.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=1))
        trainer.fit(QuantizedInput(), datamodule=RandomImages())
    images = read_events(trainer.logger.log_dir).images
    assert "filterviz/responses/net.0" not in images
    assert set(images["filterviz/weights/net.0"]) == {0, 2, 4}
