"""The Lightning callback: cadence, ranks, checkpoint state and wiring over the engine.

The logic lives in :class:`FilterMonitorLogic`, which imports no Lightning package, so
that the same code serves ``lightning.pytorch`` (:mod:`lightning_filterviz`) and
``pytorch_lightning`` (:mod:`lightning_filterviz.pl`): each package's Trainer only
accepts callbacks derived from its own ``Callback`` class.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, Sequence, Union

import numpy as np
import torch
from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_filterviz.core.arguments import MONITOR, MONITOR_DOCSTRING_WITHOUT_ARGS, with_args_section
from lightning_filterviz.capture.conv_layers import has_compiled_module, has_lazy_weights, unsupported_conv_layers
from lightning_filterviz.engine.visualizer import FilterVisualizer
from lightning_filterviz.integration.fit_identity import FitIdentity
from lightning_filterviz.capture.probe import ImageInput, check_probe_input, image_input_of, model_input
from lightning_filterviz.core.filters import WeightNormalization
from lightning_filterviz.core.settings import check_bool, check_cadence
from lightning_filterviz.publishing.sinks.null import NullSink
from lightning_filterviz.integration.snapshot_schedule import SnapshotSchedule
from lightning_filterviz.views.registry import with_logged_tags
from lightning_filterviz.integration.trainer_reading import (
    PROBE_SPLITS,
    FixedProbe,
    data_source,
    fit_destination,
    input_converter,
    is_sharded,
    log_dir_of,
)
from lightning_filterviz.integration.validation_examples import ValidationExamples
from lightning_filterviz.integration.worker_results import WorkerResults

__all__ = ["PROBE_SPLITS", "FilterMonitorLogic"]


if TYPE_CHECKING:
    # The type checker holds every ``@override`` below against Lightning's real Callback; at
    # run time the logic stays free of either package (each flavour adds its own Callback).
    from lightning.pytorch.callbacks import Callback as _CallbackBase
else:
    _CallbackBase = object


class FilterMonitorLogic(_CallbackBase):
    """Everything the callback does, independent of which Lightning package runs it."""

    # Longer than this package's other classes for a reason: the flat arguments LightningCLI
    # reads and Lightning's hooks are its surface. Each hook hands over in a few lines, to the
    # engine, trainer_reading, snapshot_schedule or validation_examples.

    def __init__(
        self,
        layers: Optional[list[str]] = None,
        every_n_epochs: Optional[int] = None,
        every_n_steps: Optional[int] = None,
        probe_size: int = 8,
        probe_split: Literal["val", "train"] = "val",
        max_filters: int = 64,
        dead_threshold: float = 0.0,
        dead_patience: int = 2,
        log_weights: bool = True,
        log_activations: bool = True,
        probe: Optional[Any] = None,
        batch_key: Optional[Union[int, str, Callable[[Any], Any]]] = None,
        forward_fn: Optional[Callable[[nn.Module, Any], Any]] = None,
        max_images: int = 2,
        weight_normalization: WeightNormalization = "filter",
        colormap: str = "viridis",
        dormant_tau: float = 0.025,
        grad_dormant_tau: float = 0.0,
        track_training_batches: bool = False,
        filmstrip_layers: Optional[list[str]] = None,
        views_every: int = 10,
        response_layers: Optional[list[str]] = None,
        examples_layers: Optional[list[str]] = None,
        examples_k: int = 9,
        featvis_layers: Optional[Sequence[str]] = (),
        save_history: bool = True,
    ) -> None:
        super().__init__()
        # NumPy numbers (from a config or a sweep) are held as plain ones, in the state key too.
        every_n_epochs, every_n_steps = check_cadence(every_n_epochs, every_n_steps)
        self._schedule = SnapshotSchedule(every_n_epochs, every_n_steps)
        check_bool("track_training_batches", track_training_batches)
        check_bool("save_history", save_history)
        self.layers = layers
        self.probe_split = probe_split
        self.save_history = save_history
        self.track_training_batches = track_training_batches
        self.engine = FilterVisualizer(
            NullSink(),  # until on_train_start knows the trainer's logger; for good on other ranks
            background=True,
            layers=layers,
            max_filters=max_filters,
            max_images=max_images,
            dead_threshold=dead_threshold,
            dead_patience=dead_patience,
            dormant_tau=dormant_tau,
            grad_dormant_tau=grad_dormant_tau,
            weight_normalization=weight_normalization,
            log_weights=log_weights,
            log_activations=log_activations,
            batch_key=batch_key,
            forward_fn=forward_fn,
            colormap=colormap,
            filmstrip_layers=filmstrip_layers,
            views_every=views_every,
            response_layers=response_layers,
            examples_layers=examples_layers,
            examples_k=examples_k,
            featvis_layers=featvis_layers,
        )
        self._probe = FixedProbe(probe, probe_size, probe_split)
        self.probe_size = self._probe.size
        # What the model's first conv takes, to tell one image from a batch (known at setup).
        self._image_input: Optional[ImageInput] = None
        self._batch_watch = contextlib.ExitStack()
        self._examples = ValidationExamples()
        self._track_requested = track_training_batches
        # What the previous fit watched, so that a fit of another model or on other data starts afresh.
        self._previous_fit = FitIdentity()
        self._enabled = True
        self._reads_gradients = True  # until reading them fails once
        self._visualizes_features = True  # until making them fails once
        self._told_featvis_cost = False
        self._model_class: Optional[str] = None  # the LightningModule's import path, known at setup
        # Where a copy of the monitor in a spawned or forked process (ddp_spawn) leaves its results.
        self._worker_results = WorkerResults()

    @property
    def dead_filters(self) -> dict[str, list[int]]:
        """Conv module name -> sorted output-channel indices now dead."""
        self._take_results_from_workers()
        return self.engine.dead_filters

    @property
    def dormant_filters(self) -> dict[str, list[int]]:
        """Conv module name -> sorted output-channel indices dormant at the latest snapshot."""
        self._take_results_from_workers()
        return self.engine.dormant_filters

    @property
    def grad_dormant_filters(self) -> dict[str, list[int]]:
        """Conv module name -> sorted output-channel indices whose gradient score (mean
        ``|dL/dW_c|`` over the layer's average) was ``<= grad_dormant_tau`` at the latest snapshot
        after an optimizer step. Frozen convs are not in it."""
        self._take_results_from_workers()
        return self.engine.grad_dormant_filters

    @property
    def feature_visualizations(self) -> dict[str, np.ndarray]:
        """Conv module name -> its latest feature visualizations (``featvis_layers``), as
        displayed: ``uint8`` ``(filters, height, width, 3)`` for an RGB input, ``(..., 1)``
        otherwise; filter ``i``'s at ``i``."""
        self._take_results_from_workers()
        return self.engine.feature_visualizations

    @property
    def dataset_examples(self) -> dict[str, list[list[tuple[Optional[int], float]]]]:
        """Conv name -> per drawn filter, ``[(dataset_index, value), ...]`` of the validation
        images it fired on most in the latest validation run, strongest first.
        ``dataset_index`` is the sample's index in the validation dataset, or ``None`` when
        the loader does not read it in order (shuffled, or an ``IterableDataset``).
        Only the first validation dataloader is read, and of each batch only each conv's
        first forward on the batch's own images (test-time augmentation copies run after
        it are left out; a batch concatenated with copies gives none); a non-finite
        response is never an example. A warning says once per fit what was left out."""
        self._take_results_from_workers()
        return self.engine.dataset_examples

    @property
    def dataset_example_positions(self) -> dict[str, list[list[tuple[int, int]]]]:
        """Like :attr:`dataset_examples`: the input pixel ``(y, x)`` where each example peaks
        (the centre of the receptive field there)."""
        self._take_results_from_workers()
        return self.engine.dataset_example_positions

    @property
    def every_n_epochs(self) -> Optional[int]:
        return self._schedule.every_n_epochs

    @property
    def every_n_steps(self) -> Optional[int]:
        return self._schedule.every_n_steps

    @property
    def probe(self) -> Optional[Any]:
        """The fixed probe batch (on the CPU), once chosen."""
        self._take_results_from_workers()
        return self._probe.batch

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            layers=self.layers, every_n_epochs=self.every_n_epochs, every_n_steps=self.every_n_steps
        )

    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        if self._previous_fit.new_model(pl_module):
            self._start_afresh()
        # Each fit tries afresh, whatever switched the monitor or the tracking off before.
        self._enabled = _can_monitor(trainer, pl_module)
        self._reads_gradients = self._visualizes_features = True
        self._model_class = f"{type(pl_module).__module__}:{type(pl_module).__qualname__}"
        # An unknown layer name fails here, before any step.
        if self._enabled and not self.engine.watch(pl_module):
            self._enabled = False
            rank_zero_warn("filterviz: the model has no nn.Conv2d layer, so FilterMonitor has nothing to show.")
        # A forward_fn decides itself how the probe reaches the model: nothing is guessed then.
        self._image_input = image_input_of(pl_module) if self.engine.settings.forward_fn is None else None
        self.track_training_batches = self._enabled and self._track_requested and _can_track(pl_module)

    @override
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not self._enabled:
            return
        if self._previous_fit.new_data_source(data_source(trainer)):
            self._start_afresh()  # the same model on other data: a new probe, new statistics
        self._probe.choose(trainer, self._image_input, self.engine.batch_key)
        # Every rank asks: Trainer.log_dir broadcasts rank 0's directory, a collective.
        log_dir = log_dir_of(trainer)
        new_log_dir = self._previous_fit.new_log_dir(log_dir)
        if not trainer.is_global_zero:
            self._check_probe(self._probe.batch)  # the same check as on rank 0, before any step
            self._snapshot(trainer, pl_module)
            return
        probe = self._probe.on_device(trainer)
        self._check_probe(probe)  # a wrong batch_key or an unbatched probe fails here, before any step
        destination = fit_destination(trainer, log_dir, self.save_history, self.every_n_epochs, self.every_n_steps)
        self.engine.attach(*destination, new_run=new_log_dir)
        self._snapshot(trainer, pl_module, probe)

    @override
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._enabled and self.track_training_batches and trainer.is_global_zero:
            self._batch_watch.enter_context(self.engine.training_batch(pl_module))

    @override
    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Tensor) -> None:
        self._batch_watch.close()  # the forward is over; the backward is not watched
        if self._enabled and self._schedule.waiting_for_weights:
            self._snapshot(trainer, pl_module)  # the forward has just given lazy modules their weights

    @override
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        # The gradients as the optimizer is about to apply them: unscaled by AMP's scaler,
        # accumulated over every micro-batch and averaged across ranks.
        if not (self._enabled and self._reads_gradients and trainer.is_global_zero):
            return
        if not self._snapshot_follows_step(trainer):
            return
        try:
            self.engine.read_gradients(pl_module)
        except Exception as error:  # monitoring must never end a training run
            self._reads_gradients = False
            rank_zero_warn(
                "filterviz: reading the convs' gradients failed, so gradient dormancy is not judged for the rest "
                f"of this run. Cause: {type(error).__name__}: {error}"
            )

    def _snapshot_follows_step(self, trainer: Any) -> bool:
        """Whether a snapshot follows the optimizer step about to run: the cadence's, or the
        last look at the trained model at the end of the fit (``max_steps`` or ``max_epochs``)."""
        step = trainer.global_step + 1
        if self._schedule.due_after_batch(step) or 0 < trainer.max_steps <= step:
            return True
        if not trainer.is_last_batch:
            return False
        last_epoch = trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch + 1
        return last_epoch or self._schedule.due_after_epoch(trainer.current_epoch)

    @override
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._batch_watch.close()
        if not self._enabled or not trainer.is_global_zero:
            return
        if self._schedule.due_after_batch(trainer.global_step):
            self._snapshot(trainer, pl_module)
        else:
            self.engine.poll()  # what the writer has finished reaches the loggers that want this thread

    @override
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._enabled and self._schedule.due_after_epoch(trainer.current_epoch):
            self._snapshot(trainer, pl_module)

    @override
    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        # Every rank collects its shard; rank 0 publishes them all at the end.
        if self._enabled:
            self._examples.start_run(self.engine, trainer, pl_module)

    @override
    def on_validation_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        # Only the first loader's batches are collected; the others' forwards are left out.
        if self._examples.active:
            self._examples.next_batch(batch, self.engine.batch_key, dataloader_idx)

    @override
    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._examples.end_run(self.engine, trainer, pl_module)
        if self._enabled and self._visualizes_features and trainer.is_global_zero and not trainer.sanity_checking:
            self._visualize_features(trainer, pl_module)

    @override
    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self._enabled and trainer.is_global_zero:
            self._finish(trainer, pl_module)

    @override
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._batch_watch.close()  # no hook may outlive the run
        self._examples.stop()
        # Stopped by the user (Ctrl-C): the views at the state training reached, as at a normal end.
        if isinstance(exception, KeyboardInterrupt) and self._enabled and trainer.is_global_zero:
            self._finish(trainer, pl_module)
        # Write what was captured before the run broke off.
        self.engine.close()

    @override
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero and self._worker_results.away_from_home():
            # ddp_spawn and the like: the monitor the user holds is in another process.
            self._worker_results.send(self._results_for_home(), trainer.default_root_dir)
        self.engine.close()

    @override
    def state_dict(self) -> dict[str, Any]:
        self._take_results_from_workers()
        return {
            "probe": self._probe.stored(),  # plain containers: the checkpoint loads with weights_only=True
            # Where filterviz-report --feature-vis finds the model's class to rebuild it from the checkpoint.
            "model_class": self._model_class,
            "last_snapshot_step": self._schedule.last_step,
            "engine": self.engine.state_dict(),
        }

    @override
    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if self.state_key not in checkpoint.get("callbacks", {}):
            rank_zero_warn(
                "filterviz: the checkpoint holds no state for this FilterMonitor (saved without it, with other "
                "settings, or by an older version); the probe batch and the dead-filter history start afresh."
            )

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("probe") is not None:
            self._probe.restore(state_dict["probe"])
        self._schedule.last_step = state_dict.get("last_snapshot_step")
        self.engine.load_state_dict(state_dict.get("engine", {}))

    def _snapshot(self, trainer: Any, pl_module: Any, probe: Optional[Any] = None) -> None:
        step = trainer.global_step
        needs_rank_plan = trainer.world_size > 1 and self.engine.settings.examples_layers != ()
        taken = self._schedule.take(
            step,
            global_zero=trainer.is_global_zero,
            needs_rank_plan=needs_rank_plan,
            lazy_weights=has_lazy_weights(pl_module),
        )
        if taken:
            # The probe on the device is the FixedProbe's, told finite (or not known) on the host.
            finite = self._probe.finite(self.engine.batch_key) or None
            probe = probe if probe is not None else self._probe.on_device(trainer)
            if not _snapshot_of_fit(self.engine, trainer, pl_module, probe, finite):
                self._enabled = False

    def _finish(self, trainer: Any, pl_module: Any) -> None:
        """Draw every view at the trained state, at the last step, however the fit ended."""
        step = trainer.global_step
        try:
            self.engine.finish(
                step,
                pl_module,
                self._probe.on_device(trainer),
                forward_context=trainer.precision_plugin.forward_context,
                convert_input=input_converter(trainer),
                probe_finite=self._probe.finite(self.engine.batch_key) or None,
            )
        except Exception as error:  # monitoring must never end a training run
            rank_zero_warn(
                f"filterviz: the views at the end of training (step {step}) could not be drawn. "
                f"Cause: {type(error).__name__}: {error}"
            )
            return
        self._schedule.last_step = step

    def _visualize_features(self, trainer: Any, pl_module: Any) -> None:
        """The ``featvis_layers``' feature visualizations at the weights this validation run saw."""
        step = trainer.global_step
        try:
            seconds = self.engine.visualize_features(
                pl_module, self._probe.on_device(trainer), step, convert_input=input_converter(trainer)
            )
        except Exception as error:  # monitoring must never end a training run
            self._visualizes_features = False
            rank_zero_warn(
                f"filterviz: the feature visualizations at step {step} failed, so they are off for the rest of "
                f"this run. Cause: {type(error).__name__}: {error}"
            )
            return
        if seconds and not self._told_featvis_cost:
            self._told_featvis_cost = True
            rank_zero_info(
                f"filterviz: the feature visualizations took {seconds:.1f} s at the end of this validation run "
                "(they run at the end of each one; `featvis_layers` chooses the layers)."
            )

    def _check_probe(self, probe: Any) -> None:
        """Raise ``ValueError`` if ``batch_key`` finds no model input in ``probe``, or one image
        where the model's first conv takes a batch."""
        key = self.engine.batch_key
        check_probe_input(model_input(probe, key), probe, self._image_input, key)

    def __getstate__(self) -> dict[str, Any]:
        # Pickled for a spawned fit: it goes on from what an earlier spawned fit handed back.
        self._take_results_from_workers()
        return self.__dict__.copy()

    def _results_for_home(self) -> dict[str, Any]:
        """What the monitor in the process that made it gets back: its checkpoint state, the
        latest dataset examples and feature visualizations, as tensors, numbers, strings and
        plain containers (they are read back with ``weights_only=True``)."""
        try:
            return {
                "state": self.state_dict(),
                "dataset_examples": self.engine.dataset_examples,
                "dataset_example_positions": self.engine.dataset_example_positions,
                "feature_visualizations": {
                    name: torch.from_numpy(images) for name, images in self.engine.feature_visualizations.items()
                },
            }
        except Exception as error:  # monitoring must never end a training run
            rank_zero_warn(f"filterviz: the results could not be gathered: {type(error).__name__}: {error}")
            return {}

    def _take_results_from_workers(self) -> None:
        """Take over the results a copy of this monitor left from another process, if any."""
        results = self._worker_results.receive()
        if not results:
            return
        self.load_state_dict(results["state"])
        state = self.engine.state  # the writer thread is idle: load_state_dict waited for it
        state.dataset_examples = results["dataset_examples"]
        state.dataset_example_positions = results["dataset_example_positions"]
        state.feature_visualizations = {
            name: images.numpy() for name, images in results.get("feature_visualizations", {}).items()
        }

    def _start_afresh(self) -> None:
        """Forget the previous fit: statistics, drift baselines, filmstrips and a probe taken from its data."""
        self.engine.reset()
        self._probe.forget()
        self._schedule.restart()


def _snapshot_of_fit(
    engine: FilterVisualizer, trainer: Any, model: nn.Module, probe: Any, probe_finite: Optional[bool]
) -> bool:
    """Take a snapshot as the trainer runs the model (its precision, its input conversion);
    rank 0 publishes it. Whether it worked: a failure is warned about, never raised."""
    step = trainer.global_step
    try:
        engine.snapshot(
            model,
            probe,
            step,
            forward_context=trainer.precision_plugin.forward_context,
            convert_input=input_converter(trainer),
            publish=trainer.is_global_zero,
            probe_finite=probe_finite,
        )
    except Exception as error:  # monitoring must never end a training run
        rank_zero_warn(
            f"filterviz: the snapshot at step {step} failed, so FilterMonitor is off for the rest of this run. "
            f"Cause: {type(error).__name__}: {error}"
        )
        return False
    return True


def _can_track(model: nn.Module) -> bool:
    """Whether training batches can be watched; says why not."""
    if has_compiled_module(model):
        rank_zero_warn(
            "filterviz: `track_training_batches` is off for this run: the model has a torch.compile'd module, "
            "whose compiled training steps a Python-level tracker would slow down or recompile."
        )
        return False
    return True


def _can_monitor(trainer: Any, model: nn.Module) -> bool:
    """Whether this fit can be monitored; says why not, and which conv layers are not drawn."""
    if trainer.fast_dev_run:
        rank_zero_info("filterviz: `fast_dev_run` is on; FilterMonitor takes no snapshots.")
        return False
    if is_sharded(trainer.strategy):
        rank_zero_warn(
            f"filterviz: FilterMonitor does not support the sharded strategy {type(trainer.strategy).__name__} "
            "yet (a probe pass there needs every rank), so it takes no snapshots in this run."
        )
        return False
    skipped = unsupported_conv_layers(model)
    if skipped:
        rank_zero_warn(
            f"filterviz: skipping {len(skipped)} conv layer(s) that are not nn.Conv2d "
            f"(1-d, 3-d or transposed): {skipped[:5]}{' ...' if len(skipped) > 5 else ''}. "
            "Only nn.Conv2d layers are drawn."
        )
    return True


# The docstring of both FilterMonitor flavours (lightning.py, pl.py).
_DOCSTRING = with_args_section(with_logged_tags(MONITOR_DOCSTRING_WITHOUT_ARGS), FilterMonitorLogic.__init__, MONITOR)
