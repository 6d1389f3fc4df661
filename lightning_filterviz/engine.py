"""The engine: capture, statistics, rendering and writing, with no Lightning in sight.

:class:`FilterVisualizer` serves plain PyTorch loops and notebooks; the Lightning
callback :class:`~lightning_filterviz.FilterMonitor` is a thin adapter over it.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from typing import Any, Callable, ContextManager, Iterator, Optional, Sequence, Union

import torch
from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn
from torch import Tensor, nn

from lightning_filterviz.capture import ForwardFn, Snapshot, capture_snapshot, track_training_batch
from lightning_filterviz.discovery import ConvLayer, select_conv_layers
from lightning_filterviz.probe import BatchKey, model_input, to_device
from lightning_filterviz.progress import HistoryWriter, ProgressTracker, resolve_filmstrip_layers
from lightning_filterviz.render import (
    WEIGHT_NORMALIZATIONS,
    Image,
    WeightNormalization,
    activation_grid,
    dead_filter_table,
    displayed_filters,
    drift_strip,
    filmstrip,
    probe_image_grid,
    weight_grid,
)
from lightning_filterviz.responses import (
    ReceptiveField,
    peak_patches,
    receptive_field,
    response_grid,
    through_the_layers,
)
from lightning_filterviz.sinks import (
    BackgroundWriter,
    DirectorySink,
    Sink,
    TensorBoardSink,
    write_images,
    write_scalars,
)
from lightning_filterviz.stats import DeadFilterTracker, dormant_indices
from lightning_filterviz.tags import (
    ACTIVATIONS,
    DEAD_FILTERS_TAG,
    DEAD_FRACTION,
    DORMANT_FRACTION,
    DRIFT,
    DRIFT_STRIP,
    FILMSTRIP,
    LAYERS_TAG,
    PROBE_TAG,
    RESPONSES,
    THROUGH_THE_LAYERS,
    WEIGHT_NORM_RATIO,
    WEIGHTS,
    layer_tag,
)

if not hasattr(rank_zero_only, "rank"):
    # Lightning sets this when it is imported; a plain PyTorch script never does, and the
    # rank-zero helpers refuse to run without it. Launchers export the rank as RANK.
    rank_zero_only.rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))

# Past this dead fraction a layer is in trouble; say so once.
DEAD_FRACTION_WARNING = 0.5


class FilterVisualizer:
    """Snapshots a model's conv filters and feature maps and logs them, in any training loop.

    Each :meth:`snapshot` runs the probe batch through the model once (eval mode, no
    autograd, hooks removed afterwards), updates the dead-filter statistics and writes:

    - ``filterviz/weights/<layer>``: the layer's normalized filters (image),
    - ``filterviz/activations/<layer>``: its activation's feature maps for the probe (image),
    - ``filterviz/dead_fraction/<layer>``: dead filters / all filters (scalar),
    - ``filterviz/dormant_fraction/<layer>``: dormant filters / all filters (scalar),
    - ``filterviz/dead_filters``: a table of layer -> dead indices (text),
    - ``filterviz/layers``: each watched conv and the activation it maps to (text, once),
    - ``filterviz/drift/<layer>`` and ``filterviz/weight_norm_ratio/<layer>``: how far the
      filters turned from their initial direction (mean cosine distance) and how their
      norm changed (scalars),
    - ``filterviz/drift_strip/<layer>``: the same per filter (image; with the views below,
      and for the latest snapshot at :meth:`finish`),
    - ``filterviz/filmstrip/<layer>``: the filters at every snapshot so far, one row per
      snapshot (image; the first conv by default),
    - ``filterviz/responses/<layer>``: each drawn filter beside the patch of the probe
      where its activation peaks (its receptive field there; the first conv by default),
    - ``filterviz/through_the_layers/<i>``: probe image ``i`` seen by every watched layer,
      a few of its busiest channels each, early to deep (image),

    (the last three at the first snapshot and every ``views_every`` snapshots),
    - ``filterviz/probe``: the probe images themselves, at the first snapshot (image),

    and, with ``history_dir``, each snapshot's arrays as ``<history_dir>/step_<step>.npz``.

    Args:
        sink: a ``SummaryWriter``, a directory path (PNG files), or any
            :class:`~lightning_filterviz.sinks.Sink`.
        layers: module names or fnmatch patterns over ``named_modules()``; ``None`` watches
            every ``nn.Conv2d``.
        max_filters: filters drawn per layer (statistics still cover all of them).
        max_images: probe images whose feature maps are drawn.
        dead_threshold: a post-activation value ``<=`` this counts as "off".
        dead_patience: consecutive snapshots a filter must be off to be reported dead.
        dormant_tau: a filter is dormant when its mean ``|activation|`` divided by the
            layer's average is ``<=`` this (ReDo's score; any activation function).
        weight_normalization: ``"filter"`` (each filter's min..max), ``"layer"`` (the
            layer's min..max) or ``"symmetric"`` (a fixed ``+-max|w|`` range taken at the
            first snapshot, which shows growth in magnitude).
        log_weights: write the filter images.
        log_activations: run the probe forward and write feature maps and dead statistics.
        batch_key: where the model input is in a batch: an index into a tuple/list or a key
            into a dict. ``None``: the batch itself, or the first element of a tuple/list.
        forward_fn: how to run the model on the input, ``forward_fn(model, input)``;
            default ``model(input)``.
        colormap: matplotlib colormap for the feature maps.
        filmstrip_layers: layers (names or fnmatch patterns) that get a filmstrip; ``None``:
            the first watched conv; ``[]``: none.
        views_every: write the drift-strip, filmstrip, peak-patch and through-the-layers
            images at the first snapshot and every this many snapshots (the drift strips
            and filmstrip also at :meth:`finish`): they cost more than the rest, and the
            filmstrip grows.
        response_layers: layers (names or fnmatch patterns) whose filters are drawn beside
            the probe patch where they peak; ``None``: the first watched conv; ``[]``: none.
            Their receptive fields are measured once, by gradient, at the first snapshot.
        history_dir: save each snapshot's small arrays (capped filters, statistics, one
            probe image's feature maps) there as NPZ, readable with ``allow_pickle=False``.
        background: render and write in a background thread, so that :meth:`snapshot`
            returns as soon as the probe pass is done. Call :meth:`flush` (or
            :meth:`close`) before reading the logs. An error there is reported as one
            warning at the next call, and writing stops; statistics go on.
        max_pending: snapshots that may wait for the background writer; when that many
            wait, :meth:`snapshot` blocks until one is written, so nothing is dropped and
            memory stays bounded however slow the disk.

    Raises:
        ValueError: for an argument outside its allowed values.

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
        weight_normalization: WeightNormalization = "filter",
        log_weights: bool = True,
        log_activations: bool = True,
        batch_key: BatchKey = None,
        forward_fn: Optional[ForwardFn] = None,
        colormap: str = "viridis",
        filmstrip_layers: Optional[Sequence[str]] = None,
        views_every: int = 10,
        response_layers: Optional[Sequence[str]] = None,
        history_dir: Optional[Union[str, os.PathLike]] = None,
        background: bool = False,
        max_pending: int = 2,
    ) -> None:
        validate_settings(
            max_filters=max_filters,
            max_images=max_images,
            dead_patience=dead_patience,
            max_pending=max_pending,
            views_every=views_every,
            weight_normalization=weight_normalization,
            colormap=colormap,
            dormant_tau=dormant_tau,
        )
        self.sink = as_sink(sink)
        self.layers = list(layers) if layers is not None else None
        self.max_filters = max_filters
        self.max_images = max_images
        self.weight_normalization = weight_normalization
        self.log_weights = log_weights
        self.log_activations = log_activations
        self.batch_key = batch_key
        self.forward_fn = forward_fn
        self.colormap = colormap
        self.tracker = DeadFilterTracker(threshold=dead_threshold, patience=dead_patience)
        self.dormant_tau = dormant_tau
        self._dormant: dict[str, list[int]] = {}
        self.filmstrip_layers = list(filmstrip_layers) if filmstrip_layers is not None else None
        self.views_every = views_every
        self.history_dir = history_dir
        self.progress = ProgressTracker()
        self._snapshot_count = 0
        self._undrawn_drift: Optional[Snapshot] = None
        self.response_layers = list(response_layers) if response_layers is not None else None
        self._response_layers: list[str] = []
        self._receptive_fields: dict[str, Optional[ReceptiveField]] = {}
        self._watched: Optional[list[ConvLayer]] = None
        # A weak reference, not id(): a freed model's address can be given to the next one.
        self._watched_model: Optional[weakref.ReferenceType[nn.Module]] = None
        self._symmetric_ranges: dict[str, float] = {}
        self._warned_dead: set[str] = set()
        self._probe_logged = False
        self._described = False
        self._publishing = True
        self._writer: Optional[BackgroundWriter] = BackgroundWriter(max_pending=max_pending) if background else None

    @property
    def dead_filters(self) -> dict[str, list[int]]:
        """Conv module name -> sorted output-channel indices now dead."""
        return self.tracker.dead_filters

    @property
    def dormant_filters(self) -> dict[str, list[int]]:
        """Conv module name -> sorted output-channel indices dormant at the latest snapshot."""
        return {name: list(indices) for name, indices in self._dormant.items()}

    def watch(self, model: nn.Module) -> list[ConvLayer]:
        """Resolve which conv layers of ``model`` are watched.

        Raises:
            ValueError: if a requested layer name or pattern matches no conv layer.
        """
        self._watched = select_conv_layers(model, self.layers)
        self._watched_model = weakref.ref(model)
        names = [conv.name for conv in self._watched]
        self.progress.filmstrip_layers = resolve_filmstrip_layers(self.filmstrip_layers, names)
        self._response_layers = resolve_filmstrip_layers(self.response_layers, names)
        return self._watched

    def _layers_of(self, model: nn.Module) -> list[ConvLayer]:
        watched_model = self._watched_model() if self._watched_model is not None else None
        if watched_model is model and self._watched is not None:
            return self._watched
        return self.watch(model)

    def snapshot(
        self,
        model: nn.Module,
        batch: Any,
        step: int,
        *,
        forward_context: Optional[Callable[[], ContextManager[Any]]] = None,
        convert_input: Optional[Callable[[Tensor], Tensor]] = None,
        publish: bool = True,
    ) -> Snapshot:
        """Capture the watched layers on ``batch`` at training step ``step`` and log them.

        Args:
            model: the network; its train/eval flags and RNG state are left as they were.
            batch: the probe batch (the model input is taken out of it with ``batch_key``).
            step: the step the images and scalars are logged at.
            forward_context: a context manager factory around the forward (autocast).
            convert_input: a dtype conversion applied to the probe's tensors.
            publish: render and write (in the background writer when ``background=True``);
                ``False`` only captures and updates the statistics.

        Returns:
            The captured :class:`~lightning_filterviz.capture.Snapshot`.

        Raises:
            ValueError: if a requested layer matches no conv, or the batch has no model input
                where ``batch_key`` says.
        """
        self._report_background_failure()
        layers = self._layers_of(model)
        inputs = to_device(model_input(batch, self.batch_key), _device_of(model), convert_input)
        draw_views = self._snapshot_count == 0 or (self._snapshot_count + 1) % self.views_every == 0
        snapshot = capture_snapshot(
            model,
            inputs,
            layers,
            step,
            forward_fn=self.forward_fn,
            max_filters=self.max_filters,
            max_images=self.max_images,
            capture_activations=self.log_activations,
            forward_context=forward_context,
            peak_layers=self._response_layers if draw_views else (),
        )
        if not self._probe_logged and isinstance(inputs, Tensor) and _looks_like_images(inputs):
            snapshot.probe_images = inputs[: self.max_images].detach().float().cpu()
            self._probe_logged = True
        self.tracker.update(snapshot)
        self._dormant = {
            name: dormant_indices(layer.channel_mean_abs, self.dormant_tau)
            for name, layer in snapshot.layers.items()
            if layer.channel_mean_abs is not None
        }
        # Everything publishing needs is fixed now, so that a background writer sees this step's state.
        snapshot.dead_filters = self.tracker.dead_filters
        snapshot.dormant_filters = self.dormant_filters
        snapshot.symmetric_ranges = self._symmetric_ranges_for(snapshot)
        self.progress.update(snapshot, self.weight_normalization, snapshot.symmetric_ranges)
        self._snapshot_count += 1
        if draw_views:
            snapshot.filmstrips = self._filmstrip_rows()
            snapshot.draw_views = True
            self._attach_receptive_fields(snapshot, model, inputs, layers)
        # Kept (drift only, no maps) so that finish() can draw the last snapshot's drift strips.
        self._undrawn_drift = None if draw_views else _drift_of(snapshot)
        self._describe_once(snapshot)
        self._warn_on_dying_layers(snapshot)
        if publish:
            self.publish(snapshot)
        return snapshot

    @contextlib.contextmanager
    def training_batch(self, model: nn.Module) -> Iterator[None]:
        """Watch one training forward pass, so that a filter firing on it is not called dead.

        Wrap the forward (not the backward) of a training step. Only per-channel maxima
        are kept (on the model's device); the next :meth:`snapshot` folds them in: a filter
        is off at a snapshot only if it stayed off on the probe and on every training
        batch watched since the previous snapshot.

        Example::

            with visualizer.training_batch(model):
                loss = criterion(model(images), labels)
            loss.backward()
        """
        layers = self._layers_of(model)
        with track_training_batch(layers) as maxima:
            yield
        self.tracker.observe_training_batch(maxima)

    def publish(self, snapshot: Snapshot) -> None:
        """Render one snapshot and write it: in the background writer, or here and now."""
        if not self._publishing:
            return
        if self._writer is None:
            self._render_and_write(snapshot)
        else:
            self._writer.submit(lambda: self._render_and_write(snapshot))

    def finish(self, step: int) -> None:
        """Write the filmstrips as they stand at ``step`` (the end of training) and the drift
        strips of the latest snapshot, when it did not draw them; then flush."""
        ending = Snapshot(step=step, filmstrips=self._filmstrip_rows())
        latest_drift, self._undrawn_drift = self._undrawn_drift, None
        if (ending.filmstrips or latest_drift is not None) and self._publishing:
            if self._writer is None:
                self._write_ending(ending, latest_drift)
            else:
                self._writer.submit(lambda: self._write_ending(ending, latest_drift))
        self.flush()

    def flush(self) -> None:
        """Wait until every submitted snapshot is written, then flush the sink."""
        if self._writer is not None:
            self._writer.drain()
            self._report_background_failure()
        if self._publishing:
            self.sink.flush()

    def close(self) -> None:
        """Flush, then stop the background writer (a later snapshot starts it again)."""
        self.flush()
        if self._writer is not None:
            self._writer.close()

    def _render_and_write(self, snapshot: Snapshot) -> None:
        step = snapshot.step
        dead = snapshot.dead_filters
        # The drawn part of each filter, found once for the grid and the history.
        needed = self.log_weights or self.history_dir is not None
        layers = snapshot.layers.items() if needed else ()
        drawn = {name: displayed_filters(layer.weight.numpy(), layer.rgb) for name, layer in layers}
        images: dict[str, Image] = {}
        if snapshot.probe_images is not None:
            images[PROBE_TAG] = probe_image_grid(snapshot.probe_images)
        for name, layer in snapshot.layers.items():
            marked = dead.get(name, [])
            if self.log_weights:
                symmetric_range = snapshot.symmetric_ranges.get(name)
                image = weight_grid(drawn[name], self.weight_normalization, symmetric_range, marked, layer.rgb)
                images[layer_tag(WEIGHTS, name)] = image
            if self.log_activations and layer.maps is not None:
                images[layer_tag(ACTIVATIONS, name)] = activation_grid(layer.maps, marked, self.colormap)
        images.update(self._filmstrip_images(snapshot))
        if snapshot.draw_views:
            images.update(self._drift_strip_images(snapshot))
        images.update(self._response_images(snapshot))
        write_images(self.sink, images, step)
        write_scalars(self.sink, snapshot_scalars(snapshot), step)
        if snapshot.layer_table is not None:
            self.sink.add_text(LAYERS_TAG, snapshot.layer_table, step)
        if dead:
            out_channels = {name: layer.out_channels for name, layer in snapshot.layers.items()}
            self.sink.add_text(DEAD_FILTERS_TAG, dead_filter_table(dead, out_channels), step)
        if self.history_dir is not None:
            HistoryWriter(self.history_dir).write(snapshot, drawn)
        self.sink.flush()

    def _attach_receptive_fields(self, snapshot: Snapshot, model: nn.Module, inputs: Any, layers: list) -> None:
        wanted = [layer for layer in layers if layer.name in self._response_layers]
        if not wanted or not isinstance(inputs, Tensor) or not _looks_like_images(inputs):
            return
        for layer in wanted:
            if layer.name not in self._receptive_fields:
                # Measured once: the field is a property of the architecture, not of the step.
                try:
                    field = receptive_field(model, inputs, layer.module, forward_fn=self.forward_fn)
                except Exception as error:  # an optional view must not take the rest down with it
                    field = None
                    rank_zero_warn(f"filterviz: no peak patches for `{layer.name}`: {type(error).__name__}: {error}")
                self._receptive_fields[layer.name] = field
            field = self._receptive_fields[layer.name]
            if field is not None and snapshot.layers[layer.name].peak_index is not None:
                snapshot.receptive_fields[layer.name] = field
        if snapshot.receptive_fields:
            snapshot.probe_inputs = inputs.detach().float().cpu()

    def _response_images(self, snapshot: Snapshot) -> dict[str, Image]:
        images: dict[str, Image] = {}
        for name, field in snapshot.receptive_fields.items():
            layer = snapshot.layers[name]
            patches = peak_patches(snapshot.probe_inputs, layer.peak_index, layer.output_hw, field)
            images[layer_tag(RESPONSES, name)] = response_grid(layer.weight, layer.rgb, patches)
        with_maps = {name: layer.maps for name, layer in snapshot.layers.items() if layer.maps is not None}
        if not with_maps or not snapshot.draw_views:
            return images
        for image in range(min(len(maps) for maps in with_maps.values())):
            view = through_the_layers({name: maps[image] for name, maps in with_maps.items()}, colormap=self.colormap)
            images[layer_tag(THROUGH_THE_LAYERS, str(image))] = view
        return images

    def _drift_strip_images(self, snapshot: Snapshot) -> dict[str, Image]:
        ratios = snapshot.weight_norm_ratio
        return {
            layer_tag(DRIFT_STRIP, name): drift_strip(drift.numpy(), ratios[name].numpy(), self.colormap)
            for name, drift in snapshot.drift.items()
        }

    def _filmstrip_images(self, snapshot: Snapshot) -> dict[str, Image]:
        return {layer_tag(FILMSTRIP, name): filmstrip(rows) for name, rows in snapshot.filmstrips.items()}

    def _write_ending(self, ending: Snapshot, latest_drift: Optional[Snapshot]) -> None:
        write_images(self.sink, self._filmstrip_images(ending), ending.step)
        if latest_drift is not None:
            write_images(self.sink, self._drift_strip_images(latest_drift), latest_drift.step)

    def _filmstrip_rows(self) -> dict[str, list[Any]]:
        rows = {name: self.progress.filmstrip_rows(name) for name in self.progress.filmstrip_layers}
        return {name: layer_rows for name, layer_rows in rows.items() if layer_rows}

    def _report_background_failure(self) -> None:
        failure = self._writer.failure if self._writer is not None else None
        if failure is None or not self._publishing:
            return
        self._publishing = False
        rank_zero_warn(
            "filterviz: writing snapshot images failed, so no more images or scalars are written in this run; "
            f"`dead_filters` is still kept up to date. Cause: {type(failure).__name__}: {failure}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "tracker": self.tracker.state_dict(),
            "symmetric_ranges": dict(self._symmetric_ranges),
            "warned_dead": sorted(self._warned_dead),
            "probe_logged": self._probe_logged,
            "dormant": self.dormant_filters,
            "progress": self.progress.state_dict(),
            "snapshot_count": self._snapshot_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state.get("tracker", {}))
        self._symmetric_ranges = dict(state.get("symmetric_ranges", {}))
        self._warned_dead = set(state.get("warned_dead", []))
        self._probe_logged = bool(state.get("probe_logged", False))
        self._dormant = {name: list(indices) for name, indices in state.get("dormant", {}).items()}
        self.progress.load_state_dict(state.get("progress", {}))
        self._snapshot_count = int(state.get("snapshot_count", 0))

    def _symmetric_ranges_for(self, snapshot: Snapshot) -> dict[str, float]:
        if self.weight_normalization != "symmetric":
            return {}
        for name, layer in snapshot.layers.items():
            # Fixed at the first snapshot, so later images show how the weights grew or shrank.
            if name not in self._symmetric_ranges:
                self._symmetric_ranges[name] = max(float(layer.weight.abs().amax()), 1e-12)
        return {name: self._symmetric_ranges[name] for name in snapshot.layers}

    def _warn_on_dying_layers(self, snapshot: Snapshot) -> None:
        for name in self.tracker.judged_layers:
            fraction = self.tracker.dead_fraction(name)
            if fraction > DEAD_FRACTION_WARNING and name not in self._warned_dead:
                self._warned_dead.add(name)
                rank_zero_warn(
                    f"filterviz: {fraction:.0%} of the filters of `{name}` are dead at step {snapshot.step} "
                    f"(ReLU output <= {self.tracker.threshold} on the whole probe for {self.tracker.patience} "
                    "snapshots in a row). A lower learning rate, a different init or a leaky activation may help."
                )

    def _describe_once(self, snapshot: Snapshot) -> None:
        if self._described or not self.log_activations:
            return
        self._described = True
        snapshot.layer_table = layer_table(snapshot)
        rank_zero_info("filterviz: watched conv layers and their activations\n" + snapshot.layer_table)
        not_relu = [name for name, layer in snapshot.layers.items() if layer.activation and not layer.zeroing]
        if not_relu:
            rank_zero_info(
                f"filterviz: dead filters are not judged for {not_relu}: their activation is not of the ReLU "
                "family and never stays at exactly zero; their dormant fraction is logged."
            )


def layer_table(snapshot: Snapshot) -> str:
    """A Markdown table: each watched conv, the activation it maps to, or why it has none."""
    rows = ["| conv | filters | activation | dead judged |", "|---|---|---|---|"]
    for name, layer in snapshot.layers.items():
        activation = layer.activation or f"none: {layer.no_activation_reason or 'activations not captured'}"
        rows.append(f"| {name} | {layer.out_channels} | {activation} | {'yes' if layer.zeroing else 'no'} |")
    return "\n".join(rows)


def validate_settings(
    *,
    max_filters: int,
    max_pending: int = 1,
    views_every: int = 1,
    max_images: int,
    dead_patience: int,
    weight_normalization: str,
    colormap: str,
    dormant_tau: float = 0.0,
) -> None:
    """Fail fast, naming the argument and what it accepts."""
    if isinstance(dormant_tau, bool) or not isinstance(dormant_tau, (int, float)) or not dormant_tau >= 0:
        raise ValueError(f"`dormant_tau` must be a number >= 0, got {dormant_tau!r}.")
    for name, value in (
        ("max_filters", max_filters),
        ("max_images", max_images),
        ("dead_patience", dead_patience),
        ("max_pending", max_pending),
        ("views_every", views_every),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
    if weight_normalization not in WEIGHT_NORMALIZATIONS:
        raise ValueError(
            f"`weight_normalization` must be one of {WEIGHT_NORMALIZATIONS}, got {weight_normalization!r}."
        )
    import matplotlib

    if colormap not in matplotlib.colormaps:
        raise ValueError(f"`colormap` must be a matplotlib colormap name such as 'viridis', got {colormap!r}.")


def snapshot_scalars(snapshot: Snapshot) -> dict[str, float]:
    """Every scalar one snapshot logs, by tag (computed in NumPy: this runs on the writer thread)."""
    scalars: dict[str, float] = {}
    for name, layer in snapshot.layers.items():
        if name in snapshot.dead_filters:
            scalars[layer_tag(DEAD_FRACTION, name)] = len(snapshot.dead_filters[name]) / layer.out_channels
        if name in snapshot.dormant_filters:
            scalars[layer_tag(DORMANT_FRACTION, name)] = len(snapshot.dormant_filters[name]) / layer.out_channels
        if name in snapshot.drift:
            scalars[layer_tag(DRIFT, name)] = float(snapshot.drift[name].numpy().mean())
            scalars[layer_tag(WEIGHT_NORM_RATIO, name)] = float(snapshot.weight_norm_ratio[name].numpy().mean())
    return scalars


def as_sink(target: Any) -> Sink:
    """Accept a sink, a ``SummaryWriter`` (anything with ``add_image``) or a directory path."""
    if isinstance(target, (str, os.PathLike)):
        return DirectorySink(target)
    if isinstance(target, (TensorBoardSink, DirectorySink)):
        return target
    if all(hasattr(target, method) for method in ("add_image", "add_scalar", "add_text", "flush")):
        writer_like = hasattr(target, "add_images") or type(target).__name__ == "SummaryWriter"
        return TensorBoardSink(target) if writer_like else target
    raise TypeError(
        f"Cannot log to a {type(target).__name__}: pass a SummaryWriter, a directory path, "
        "or an object with add_image, add_scalar, add_text and flush."
    )


def _drift_of(snapshot: Snapshot) -> Optional[Snapshot]:
    if not snapshot.drift:
        return None
    return Snapshot(step=snapshot.step, drift=dict(snapshot.drift), weight_norm_ratio=dict(snapshot.weight_norm_ratio))


def _looks_like_images(inputs: Tensor) -> bool:
    return inputs.dim() == 4 and inputs.shape[1] in (1, 3)


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
