"""The engine: one snapshot through its stages, with no Lightning in sight.

:class:`FilterVisualizer` serves plain PyTorch loops and notebooks; the Lightning
callback :class:`~lightning_filterviz.FilterMonitor` is a thin adapter over it.

A snapshot flows one way, each stage handing the next a frozen record::

    training thread                         | writer thread (background=True)
    capture/: the probe pass (probe_pass,   | engine/delivery: waits for the copy, then
      probe_capture: reductions on the      |   state/: judges it -> Snapshot (dead,
      device), one transfer to host         |     dormant, drift, filmstrip rows)
      (transfer) -> CapturedSnapshot  ----> |   views/: renders it -> Rendered (images,
                                            |     scalars, tables, history arrays)
                                            |   publishing/: writes them (sinks, history)

Each public method hands over to the probe pass (training thread) or the delivery (writer
thread); whatever changes the run state goes through the writer's queue.
"""

from __future__ import annotations

import contextlib
import operator
import os
import time
from typing import Any, Callable, ContextManager, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from lightning_utilities.core.rank_zero import rank_zero_only
from torch import Tensor, nn

from lightning_filterviz.core.arguments import VISUALIZER, with_args_section
from lightning_filterviz.capture.feature_visualization import visualize_filters
from lightning_filterviz.capture.probe_capture import ForwardFn, side_pass
from lightning_filterviz.capture.dataset_examples import ExampleCollector, InFlightExamples
from lightning_filterviz.core.records import LayerExamples
from lightning_filterviz.engine.delivery import Delivery, PendingSnapshot
from lightning_filterviz.capture.conv_layers import ConvLayer
from lightning_filterviz.capture.probe import BatchKey
from lightning_filterviz.core.pickling import RebuiltWhenUnpickled
from lightning_filterviz.capture.probe_pass import ProbePass
from lightning_filterviz.core.records import FeatureVisualizations, Snapshot
from lightning_filterviz.core.filters import WeightNormalization
from lightning_filterviz.state.run_state import RunState
from lightning_filterviz.core.settings import VisualizerSettings, check_bool
from lightning_filterviz.publishing.sinks.base import Sink, as_sink
from lightning_filterviz.capture.tracking import TrainingBatchWatch
from lightning_filterviz.views.registry import with_logged_tags

__all__ = ["FilterVisualizer"]

if not hasattr(rank_zero_only, "rank"):
    # Lightning sets this when it is imported; a plain PyTorch script never does, and the
    # rank-zero helpers refuse to run without it. Launchers export the rank as RANK.
    rank_zero_only.rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))  # type: ignore[attr-defined]


# Optimization steps per feature visualization (benchmarks/feature_vis.py measures what they cost).
FEATURE_VIS_STEPS = 256


class FilterVisualizer(RebuiltWhenUnpickled):
    """Snapshots a model's conv filters and feature maps and logs them, in any training loop.

    Each :meth:`snapshot` runs the probe batch through the model once (eval mode, no
    autograd, hooks removed afterwards), updates the dead-filter statistics and writes
    what the layers show (the examples: :meth:`publish_dataset_examples`; the drift strips
    of the latest snapshot: :meth:`finish`):

    <logged tags>

    With ``history_dir``, each snapshot's arrays are also saved as
    ``<history_dir>/step_<step>.npz``.

    On the training thread a snapshot costs the probe's forward plus a few kernel launches
    and one non-blocking copy to host memory; with ``background=True`` everything else
    (statistics, drift, drawing, writing) runs on the writer thread. :attr:`dead_filters`
    and :attr:`dormant_filters` always reflect every snapshot taken so far, and
    :attr:`dataset_examples` the latest examples published: reading them waits for the
    writer to judge what it still holds (not to draw it).

    Raises:
        ValueError: for an argument outside its allowed values.
        TypeError: for an argument of the wrong type, or a ``sink`` it cannot write to.

    Example::

        from torch.utils.tensorboard import SummaryWriter
        from lightning_filterviz import FilterVisualizer

        visualizer = FilterVisualizer(SummaryWriter("runs/cnn"))
        probe = next(iter(val_loader))
        for step, (images, labels) in enumerate(train_loader):
            if step % 100 == 0:
                visualizer.snapshot(model, probe, step)
            ...  # the usual forward, backward and optimizer step
        print(visualizer.dead_filters)
    """

    # Longer than this package's other classes for a reason: it is the public API, and more
    # than half of it is that API's documentation. Each method hands over in a few lines, to
    # the probe pass (training thread) or the delivery (writer thread), which alone changes
    # the run state.

    # A spawned process watches its own model afresh.
    rebuilt_when_unpickled = {"_probe_pass": lambda: None}

    def __init__(
        self,
        sink: Union[Sink, Any, str, os.PathLike],
        *,
        layers: Optional[Sequence[str]] = None,
        max_filters: int = 64,
        max_images: int = 2,
        dead_threshold: float = 0.0,
        dead_patience: int = 2,
        dormant_tau: float = 0.025,
        grad_dormant_tau: float = 0.0,
        weight_normalization: WeightNormalization = "filter",
        log_weights: bool = True,
        log_activations: bool = True,
        batch_key: BatchKey = None,
        forward_fn: Optional[ForwardFn] = None,
        colormap: str = "viridis",
        filmstrip_layers: Optional[Sequence[str]] = None,
        views_every: int = 10,
        response_layers: Optional[Sequence[str]] = None,
        examples_layers: Optional[Sequence[str]] = None,
        examples_k: int = 9,
        featvis_layers: Optional[Sequence[str]] = (),
        history_dir: Optional[Union[str, os.PathLike]] = None,
        background: bool = False,
        max_pending: int = 2,
    ) -> None:
        # Each setting by name: renaming an argument fails here instead of dropping a user's value.
        self.settings = VisualizerSettings(
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
            max_pending=max_pending,
        )
        check_bool("background", background)
        if history_dir is not None and not isinstance(history_dir, (str, os.PathLike)):
            raise TypeError(f"`history_dir` must be None or a directory path, got {history_dir!r}.")
        self._delivery = Delivery(
            self.settings, as_sink(sink), history_dir, background=background
        )
        self._snapshot_count = 0
        self._probe_logged = False
        self._training_batches = TrainingBatchWatch()  # off for good once it failed
        self._reset_watch()
        self._forget_steps()

    def _forget_steps(self) -> None:
        # The step of the latest snapshot, and of the latest that drew the costlier views (see finish()).
        self._last_step: Optional[int] = None
        self._views_step: Optional[int] = None

    def _reset_watch(self) -> None:
        # The watched model, its convs, plan, training maxima and receptive fields.
        self._probe_pass: Optional[ProbePass] = None

    @property
    def sink(self) -> Sink:
        """Where images, scalars and text go (see :meth:`attach`)."""
        return self._delivery.publisher.sink

    @property
    def state(self) -> RunState:
        """The run's statistics and progress (updated on the writer thread with ``background=True``)."""
        return self._delivery.state

    @property
    def batch_key(self) -> BatchKey:
        """Where the model input is in a batch (see the ``batch_key`` argument)."""
        return self.settings.batch_key

    @property
    def dead_filters(self) -> dict[str, list[int]]:
        """Conv module name -> sorted output-channel indices now dead, after every snapshot taken."""
        self._delivery.wait_for_results()
        return self.state.tracker.dead_filters

    @property
    def dormant_filters(self) -> dict[str, list[int]]:
        """Conv module name -> sorted output-channel indices dormant at the latest snapshot."""
        self._delivery.wait_for_results()
        return {name: list(indices) for name, indices in self.state.dormant.items()}

    @property
    def grad_dormant_filters(self) -> dict[str, list[int]]:
        """Conv module name -> sorted output-channel indices whose gradient score (GraMa: mean
        ``|dL/dW_c|`` over the layer's average) was ``<= grad_dormant_tau`` at the latest
        snapshot that read the conv's gradients (see :meth:`read_gradients`). Frozen convs
        (weight not requiring grad) are not in it."""
        self._delivery.wait_for_results()
        return {name: list(indices) for name, indices in self.state.grad_dormant.items()}

    @property
    def feature_visualizations(self) -> dict[str, np.ndarray]:
        """Conv name -> its latest feature visualizations (see :meth:`visualize_features`), as
        displayed: ``uint8`` ``(filters, height, width, 3)`` for an RGB input, ``(..., 1)`` otherwise;
        filter ``i``'s at ``i``."""
        self._delivery.wait_for_results()
        return dict(self.state.feature_visualizations)

    @property
    def dataset_examples(self) -> dict[str, list[list[tuple[Optional[int], float]]]]:
        """Conv name -> per drawn filter, ``[(dataset_index, value), ...]`` of the examples it
        fired on most in the latest pass (see :meth:`dataset_examples_pass`), strongest first.
        ``dataset_index`` is ``None`` where the pass did not know it."""
        self._delivery.wait_for_results()
        return self.state.dataset_examples

    @property
    def dataset_example_positions(self) -> dict[str, list[list[tuple[int, int]]]]:
        """Like :attr:`dataset_examples`: the input pixel ``(y, x)`` at the centre of each
        example's receptive field, where the filter peaks."""
        self._delivery.wait_for_results()
        return self.state.dataset_example_positions

    def attach(
        self,
        sink: Union[Sink, Any, str, os.PathLike],
        history_dir: Optional[Union[str, os.PathLike]] = None,
        *,
        new_run: bool = False,
    ) -> None:
        """Write from now on to ``sink`` (and save history files in ``history_dir``, if given).

        Waits for snapshots still being written to the previous destination. With
        ``new_run``, the next snapshot also writes the probe images and the layer table,
        which a new destination has not seen.
        """
        self._delivery.attach(as_sink(sink), history_dir, new_run=new_run)
        if new_run:
            self._probe_logged = False

    def reset(self) -> None:
        """Forget the run so far (statistics, drift baselines, filmstrips, the watched model),
        after writing what is still queued; the settings and the destination stay."""
        self._delivery.reset()
        self._snapshot_count = 0
        self._probe_logged = False
        self._training_batches = TrainingBatchWatch()  # a new run watches training batches again
        self._reset_watch()
        self._forget_steps()

    def watch(self, model: nn.Module) -> list[ConvLayer]:
        """Resolve which conv layers of ``model`` are watched.

        Raises:
            ValueError: if a name or pattern in ``layers`` matches no conv layer, or one in
                ``filmstrip_layers`` or ``response_layers`` none of the watched ones.
        """
        self._reset_watch()
        self._probe_pass = ProbePass(model, self.settings)
        self._probe_pass.resolve_layer_arguments()  # the filmstrip layers travel with each snapshot
        return self._probe_pass.layers

    def snapshot(
        self,
        model: nn.Module,
        batch: Any,
        step: int,
        *,
        forward_context: Optional[Callable[[], ContextManager[Any]]] = None,
        convert_input: Optional[Callable[[Tensor], Tensor]] = None,
        publish: bool = True,
        draw_views: Optional[bool] = None,
        probe_finite: Optional[bool] = None,
    ) -> Union[Snapshot, PendingSnapshot]:
        """Capture the watched layers on ``batch`` at training step ``step`` and log them.

        Args:
            model: the network; its train/eval flags and RNG state are left as they were.
            batch: the probe batch (the model input is taken out of it with ``batch_key``).
            step: the step the images and scalars are logged at: an int (a step held in a GPU
                tensor would be read with a host synchronization).
            forward_context: a context manager factory around the forward (autocast).
            convert_input: a dtype conversion applied to the probe's tensors.
            publish: render and write (in the background writer when ``background=True``);
                ``False`` only captures and updates the statistics.
            draw_views: whether this snapshot draws the costlier views (peak patches, through
                the layers, drift strips, filmstrips); ``None``: as ``views_every`` says.
            probe_finite: whether the batch's model input is known to hold no NaN or Inf, for
                a caller that checked it in host memory before moving it to the GPU.
                ``None``: checked here, once per probe, where it is in host memory. Where it
                is not known, the statistics leave non-finite positions out (about a dozen
                kernels per layer instead of two).

        Returns:
            The judged :class:`~lightning_filterviz.core.records.Snapshot`, frozen and complete.
            With ``background=True``, a :class:`~lightning_filterviz.engine.delivery.PendingSnapshot`
            whose ``result()`` waits for the writer thread to judge it and returns it; the
            snapshot has a ``result()`` too (itself), so ``visualizer.snapshot(...).result()``
            works either way.

        Raises:
            ValueError: if a requested layer matches no conv, the batch has no model input
                where ``batch_key`` says, or a watched conv has no weights yet (a lazy module
                before its first forward).
            TypeError: if ``step`` is not an integer.
        """
        step = _as_step(step)
        self._delivery.report_failure()
        self.poll()
        # Training thread: the probe pass, reductions on the device, one copy to host memory.
        probe_pass = self._probe_pass_of(model)
        if draw_views is None:
            draw_views = views_due(self._snapshot_count + 1, self.settings.views_every)
        captured = probe_pass.capture(
            model,
            batch,
            step,
            forward_context=forward_context,
            convert_input=convert_input,
            draw_views=draw_views,
            probe_images=not self._probe_logged,
            probe_finite=probe_finite,
        )
        self._probe_logged = self._probe_logged or captured.carries("probe_images")
        in_flight = captured.ship()
        self._snapshot_count += 1
        self._last_step = step
        self._views_step = step if draw_views else self._views_step
        # Writer thread (or here, with background=False): run state, views, publishing.
        return self._delivery.submit_snapshot(in_flight, publish)

    def visualize_features(
        self,
        model: nn.Module,
        batch: Any,
        step: int,
        *,
        convert_input: Optional[Callable[[Tensor], Tensor]] = None,
        steps: int = FEATURE_VIS_STEPS,
    ) -> float:
        """Make the feature visualizations of the ``featvis_layers``' drawn filters and log them
        (``filterviz/feature_vis/<layer>``, :attr:`feature_visualizations`, the history).

        For each filter, an input is optimized for ``steps`` steps to raise the filter's mean
        response, at the size and in the input range of ``batch``'s model input (see
        :func:`~lightning_filterviz.capture.feature_visualization.visualize_filters`). It runs
        here, on the calling thread, and leaves the model as it was: its modes, parameters,
        gradients, buffers and every random generator.

        Args:
            model: the network (watched by earlier snapshots, or watched now).
            batch: the probe batch (the model input is taken out of it with ``batch_key``).
            step: the training step the images are logged at.
            convert_input: a dtype conversion applied to the probe's tensors.
            steps: optimization steps per visualization.

        Returns:
            The seconds it took (0 when there is nothing to visualize).

        Raises:
            ValueError: if the model input is not a batch of images ``(N, C, H, W)``.
        """
        step = _as_step(step)
        probe_pass = self._probe_pass_of(model)
        targets = probe_pass.featvis_targets()
        if not targets:
            return 0.0
        inputs = probe_pass.model_inputs(model, batch, convert_input)
        if not isinstance(inputs, Tensor) or inputs.dim() != 4:
            raise ValueError(
                "Feature visualization needs the model input to be one batch of images (N, C, H, W), got "
                f"{type(inputs).__name__}{tuple(inputs.shape) if isinstance(inputs, Tensor) else ''}; "
                "set `featvis_layers=[]` for this model."
            )
        started = time.perf_counter()
        images, weights, rgb = {}, {}, {}
        for name, (conv, target) in targets.items():
            channels = range(min(conv.out_channels, self.settings.max_filters))
            images[name] = visualize_filters(
                model, target, channels, inputs, steps=steps, call=self.settings.forward_fn, conv=conv
            )
            with side_pass(model):  # the weight as the eval forward computes it (a parametrization runs no update)
                weights[name] = conv.weight[: len(channels)].to("cpu", torch.float32, copy=True)
            rgb[name] = conv.in_channels == 3 and conv.groups == 1
        seconds = time.perf_counter() - started
        visuals = FeatureVisualizations(step=step, images=images, weights=weights, rgb=rgb, seconds=seconds)
        self._delivery.submit_feature_vis(visuals)
        return seconds

    def read_gradients(self, model: nn.Module) -> None:
        """Read the gradients of ``model``'s watched convs for the next snapshot, which then
        logs each conv's gradient-dormant fraction (``filterviz/grad_dormant_fraction/<layer>``)
        and keeps the per-filter scores in the history.

        Call it after the backward pass and before the optimizer step whose gradients are to
        be judged (with gradient accumulation, after the last micro-batch; with AMP's gradient
        scaler, after ``scaler.unscale_(optimizer)``), on steps followed by a snapshot: it
        costs one reduction per conv on the device and reads nothing on the host. A later
        call before the snapshot replaces what an earlier one read.

        Example::

            loss.backward()
            if step % 100 == 0:  # the snapshot below is due
                visualizer.read_gradients(model)
            optimizer.step()
            if step % 100 == 0:
                visualizer.snapshot(model, probe, step)
        """
        self._probe_pass_of(model).read_gradients()

    @contextlib.contextmanager
    def training_batch(self, model: nn.Module) -> Iterator[None]:
        """Watch one training forward pass, so that a filter firing on it is not called dead.

        Wrap the forward (not the backward) of a training step. Only per-channel maxima
        are kept, on the model's device, with no host synchronization; the next
        :meth:`snapshot` ships them with the rest: a filter is off at a snapshot only if it
        stayed off on the probe and on every training batch watched since the previous one.
        After the first snapshot, a conv whose ReLU-family activation takes its input from a
        module (the conv, or its normalization) is watched by a plain hook there, the other
        ReLU-family convs by the tracer, and a conv without such an activation not at all
        (nothing about it is judged dead); before the first snapshot, every conv by the tracer.
        An error of this watching is never raised into the forward: it stops the watching
        for the rest of the run, with one warning.

        Example::

            with visualizer.training_batch(model):
                loss = criterion(model(images), labels)
            loss.backward()
        """
        with self._training_batches.watching(lambda: self._probe_pass_of(model), self.settings.dead_threshold):
            yield

    def dataset_examples_pass(self, model: nn.Module) -> Optional[ExampleCollector]:
        """A collector of dataset examples for one pass over a dataset (a validation run).

        ``None`` when there is nothing to collect: no snapshot of ``model`` yet (the first one
        finds each conv's activation and measures the receptive fields), or no layer of
        ``examples_layers`` with a ReLU-family activation that one module's output shows
        (see the layer table) and a measured receptive field.

        Example::

            collector = visualizer.dataset_examples_pass(model)
            with collector.collecting(), torch.no_grad():
                start = 0
                for images, _ in val_loader:  # in order, so positions are dataset indices
                    collector.next_batch(images, torch.arange(start, start + len(images)))
                    model(images)
                    start += len(images)
            visualizer.publish_dataset_examples(collector.results(), model, step)
        """
        if self._probe_pass is None or not self._probe_pass.watches(model):
            return None
        layers = self._probe_pass.example_layers()
        return ExampleCollector(layers, self.settings.max_filters, self.settings.examples_k) if layers else None

    def publish_dataset_examples(
        self, examples: dict[str, LayerExamples], model: nn.Module, step: int, *, gathered: bool = False
    ) -> None:
        """Keep ``examples`` (:meth:`ExampleCollector.results`) as :attr:`dataset_examples`,
        and write their images (``filterviz/examples/<layer>``) and history file at ``step``.
        They cross to the host in one non-blocking copy, read on the writer thread; call it
        with the model in eval mode (its weights are read as the eval forward computes them).
        With ``gathered``, ``examples`` hold several ranks' results stacked ``(ranks, F, slots, ...)``
        (see :func:`~lightning_filterviz.integration.validation_examples.gathered_examples`): the writer
        thread merges them, each sample once. There the ``examples_k`` strongest candidates from
        distinct places of the data are kept per filter (see
        :func:`~lightning_filterviz.capture.distinct_places.distinct_places`)."""
        step = _as_step(step)
        watched = self._probe_pass.layers if self._probe_pass is not None else []
        convs = {layer.name: layer.module for layer in watched if layer.name in examples}
        weights = {name: conv.weight[: self.settings.max_filters] for name, conv in convs.items()}
        rgb = {name: conv.in_channels == 3 and conv.groups == 1 for name, conv in convs.items()}
        in_flight = InFlightExamples(examples, weights, gathered=gathered, k=self.settings.examples_k)
        self._delivery.submit_examples(in_flight, step, rgb)

    def finish(
        self,
        step: int,
        model: Optional[nn.Module] = None,
        batch: Any = None,
        *,
        forward_context: Optional[Callable[[], ContextManager[Any]]] = None,
        convert_input: Optional[Callable[[Tensor], Tensor]] = None,
        probe_finite: Optional[bool] = None,
    ) -> None:
        """Write what the end of training at ``step`` shows, then flush.

        With ``model`` and its probe ``batch``, every view is drawn at its trained state at
        ``step``: when the latest snapshot is older, one more snapshot is taken there, with
        every view; when the snapshot at ``step`` did not draw the costlier views, the model
        is looked at once more to draw them (that look counts in no statistic). Without a
        model, the filmstrips as they stand and the latest snapshot's drift strips are written.

        Args:
            step: the last training step.
            model: the trained network, or ``None``.
            batch: the probe batch, as given to :meth:`snapshot`.
            forward_context: as in :meth:`snapshot`.
            convert_input: as in :meth:`snapshot`.
            probe_finite: as in :meth:`snapshot`.

        Raises:
            TypeError: if ``step`` is not an integer.
        """
        step = _as_step(step)
        final = None
        if model is not None and self._probe_pass is not None and self._last_step is not None:
            if self._last_step != step:
                self.snapshot(
                    model,
                    batch,
                    step,
                    forward_context=forward_context,
                    convert_input=convert_input,
                    draw_views=True,
                    probe_finite=probe_finite,
                )
            elif self._views_step != step:
                final = self._probe_pass_of(model).capture(
                    model,
                    batch,
                    step,
                    forward_context=forward_context,
                    convert_input=convert_input,
                    draw_views=True,
                    probe_images=False,
                    probe_finite=probe_finite,
                ).ship()
                self._views_step = step
        self._delivery.submit_ending(step, final)
        self.flush()

    def flush(self) -> None:
        """Wait until every submitted snapshot is written, then flush the sink."""
        self._delivery.flush()

    def poll(self) -> None:
        """On the training thread: show the messages the writer has queued, and let sinks whose
        logger must be called from this thread (e.g. ``CSVLogger``'s ``log_metrics``) deliver.
        Cheap when there is nothing to do; the callback calls it after every training batch."""
        self._delivery.poll()

    def close(self) -> None:
        """Flush, then stop the background writer (a later snapshot starts it again)."""
        self._delivery.close()

    def state_dict(self) -> dict[str, Any]:
        self._delivery.wait_for_results()
        return {**self.state.state_dict(), "probe_logged": self._probe_logged, "snapshot_count": self._snapshot_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._delivery.load_state(state)
        self._probe_logged = bool(state.get("probe_logged", False))
        self._snapshot_count = int(state.get("snapshot_count", 0))

    def _probe_pass_of(self, model: nn.Module) -> ProbePass:
        if self._probe_pass is None or not self._probe_pass.watches(model):
            self.watch(model)
        assert self._probe_pass is not None
        return self._probe_pass


# The tags and the Args section, each documented once (None: docstrings stripped by python -OO).
if FilterVisualizer.__doc__ is not None:
    FilterVisualizer.__doc__ = with_args_section(
        with_logged_tags(FilterVisualizer.__doc__), FilterVisualizer.__init__, VISUALIZER
    )


def views_due(count: int, views_every: int) -> bool:
    """Whether the ``count``-th snapshot of a run (from 1) draws the costlier views: the 1st,
    2nd, 4th, 8th ... (so that a short run shows them at several steps) and every
    ``views_every``-th (so that a long one shows them all along, at a bounded cost)."""
    return count & (count - 1) == 0 or count % views_every == 0


def _as_step(step: Any) -> int:
    try:
        return operator.index(step)  # int, NumPy and 0-d integer tensors
    except TypeError:
        raise TypeError(f"`step` must be an integer (the training step), got {step!r}.") from None
