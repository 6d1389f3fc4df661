"""One probe forward and what it captures, on the model's device.

:class:`~lightning_filterviz.capture.probe_pass.ProbePass` decides what a snapshot captures
and when; this module runs the pass.

One eval forward of the probe with hooks in: per-layer reductions (per-channel maximum
and mean ``|activation|``, capped and area-downsampled feature maps, peak positions) are
computed on the model's device, packed with the capped weights into one buffer and copied
to host memory in one non-blocking transfer (:mod:`lightning_filterviz.capture.transfer`).
Nothing here reads a value of a device tensor on the host, so on a GPU the training
thread pays the forward and a few kernel launches, never a wait for the GPU.

Every hook the pass adds is removed, and every module's train/eval flag and the RNG
state are restored, whether the pass succeeds or raises.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Callable, Collection, ContextManager, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_filterviz.capture.activations import ActivationRecorder, ActivationTap, ProbePlan
from lightning_filterviz.capture.conv_layers import ConvLayer
from lightning_filterviz.capture.discovery import NOT_RUN, ActivationTracer
from lightning_filterviz.capture.gradients import is_frozen
from lightning_filterviz.core.records import PRE_ACTIVATION, CapturedSnapshot, LayerCapture, ReceptiveField
from lightning_filterviz.capture.buffers import untouched_buffers
from lightning_filterviz.capture.rng import untouched_random_state
from lightning_filterviz.capture.transfer import HostBuffer, TransferPacker

__all__ = [
    "CapturedProbe",
    "ForwardFn",
    "InFlightSnapshot",
    "SnapshotDraft",
    "capture_snapshot",
    "side_pass",
    "start_capture",
]

ForwardFn = Callable[[nn.Module, Any], Any]

# Feature maps larger than this (height or width) are area-downsampled for drawing.
MAX_MAP_SIZE = 48


# Who a shipped tensor belongs to: the snapshot itself, or one of its layers by name.
SNAPSHOT = ("snapshot",)


def _layer_owner(name: str) -> tuple[str, str]:
    return ("layer", name)


class SnapshotDraft:
    """A snapshot while the training thread still gathers it: never handed to another thread.

    Each layer is a frozen :class:`~lightning_filterviz.core.records.LayerCapture` without its
    tensors, replaced as the pass learns more of it; the tensors travel apart, in the one
    copy to host memory, and join the layers in :meth:`InFlightSnapshot.wait`.
    """

    def __init__(self, step: int) -> None:
        self.step = step
        self.layers: dict[str, LayerCapture] = {}
        self.receptive_fields: dict[str, ReceptiveField] = {}
        self.draw_views = False
        self.filmstrip_layers: tuple[str, ...] = ()

    def update_layer(self, name: str, **changes: Any) -> None:
        self.layers[name] = dataclasses.replace(self.layers[name], **changes)

    def without_tensors(self) -> CapturedSnapshot:
        """What the draft knows, frozen: the record the shipped tensors complete."""
        return CapturedSnapshot(
            step=self.step,
            layers=self.layers,
            receptive_fields=self.receptive_fields,
            draw_views=self.draw_views,
            filmstrip_layers=self.filmstrip_layers,
        )


class InFlightSnapshot:
    """A snapshot whose tensors are on their way to host memory.

    Args:
        metadata: the snapshot without its tensors.
        host: the copy on its way.
    """

    def __init__(self, metadata: CapturedSnapshot, host: HostBuffer) -> None:
        self.step = metadata.step
        self._metadata = metadata
        self._host = host

    def wait(self) -> CapturedSnapshot:
        """Block until the copy to host memory has completed; return the whole snapshot."""
        self._host.wait()
        # Keyword arguments of dataclasses.replace, typed loosely: each names a tensor field.
        arrived: dict[Any, dict[str, Any]] = {}
        for owner, field, tensor in self._host.views():
            arrived.setdefault(owner, {})[field] = tensor
        layers = {
            name: _with_nchw_weight(dataclasses.replace(layer, **arrived.get(_layer_owner(name), {})))
            for name, layer in self._metadata.layers.items()
        }
        return dataclasses.replace(self._metadata, layers=layers, **arrived.get(SNAPSHOT, {}))


def _with_nchw_weight(layer: LayerCapture) -> LayerCapture:
    """The layer with its weights laid out in NCHW order: they arrive in the model's memory
    order (channels_last, say), and drift, the drawn slices and the history read them as NCHW."""
    if layer.weight.is_contiguous():
        return layer
    weight = torch.from_numpy(np.ascontiguousarray(layer.weight.numpy()))  # NumPy: no torch thread pool here
    return dataclasses.replace(layer, weight=weight)


class CapturedProbe:
    """What one probe pass found, before it is shipped to host memory.

    More tensors (the probe images, say) may be added with :meth:`add` until :meth:`ship`.

    Attributes:
        draft: the snapshot as gathered so far (layer names, activations, shapes).
        plan: how the activations were observed, for the next pass (``None``: trace anew).
    """

    def __init__(self, draft: SnapshotDraft, packer: TransferPacker, plan: Optional[ProbePlan]) -> None:
        self.draft = draft
        self.plan = plan
        self._packer = packer

    def add(self, field: str, tensor: Tensor) -> None:
        """Ship ``tensor`` with the rest; it lands as the snapshot's ``field``."""
        self._packer.add(SNAPSHOT, field, tensor)

    def carries(self, field: str) -> bool:
        """Whether the snapshot's ``field`` is among what :meth:`ship` will ship."""
        return self._packer.holds(SNAPSHOT, field)

    def ship(self) -> InFlightSnapshot:
        """Start the one copy to host memory and return at once."""
        return InFlightSnapshot(self.draft.without_tensors(), self._packer.ship())


def capture_snapshot(
    model: nn.Module, inputs: Any, layers: Sequence[ConvLayer], step: int, **options: Any
) -> CapturedSnapshot:
    """Run the probe through ``model`` once and return the captured layers, on the CPU.

    The synchronous form of :func:`start_capture` (which takes the same arguments): it
    waits for the copy to host memory.

    Returns:
        A :class:`~lightning_filterviz.core.records.CapturedSnapshot` of small detached CPU tensors.
    """
    return start_capture(model, inputs, layers, step, **options).ship().wait()


def start_capture(
    model: nn.Module,
    inputs: Any,
    layers: Sequence[ConvLayer],
    step: int,
    *,
    forward_fn: Optional[ForwardFn] = None,
    max_filters: int = 64,
    max_images: int = 2,
    max_map_size: int = MAX_MAP_SIZE,
    capture_activations: bool = True,
    forward_context: Optional[Callable[[], ContextManager[Any]]] = None,
    peak_layers: Collection[str] = (),
    training_maxima: Optional[Mapping[str, Tensor]] = None,
    gradient_magnitudes: Optional[Mapping[str, Tensor]] = None,
    plan: Optional[ProbePlan] = None,
    finite_input: bool = False,
) -> CapturedProbe:
    """Run the probe through ``model`` once and capture the watched conv layers on their device.

    Args:
        model: the network, run eagerly in eval mode under ``torch.no_grad``.
        inputs: the model input, already on the model's device.
        layers: the convs to capture (see :func:`~lightning_filterviz.capture.conv_layers.select_conv_layers`).
        step: the training step this snapshot belongs to.
        forward_fn: how to run the model, ``forward_fn(model, inputs)``; default ``model(inputs)``.
        max_filters: filters (and activation channels) kept for drawing per layer.
        max_images: probe images whose feature maps are kept.
        max_map_size: feature maps larger than this (height or width) are area-downsampled.
        capture_activations: run the probe forward; with ``False`` only weights are taken.
        forward_context: a context manager factory around the forward (mixed precision).
        peak_layers: layers whose channels' strongest positions are recorded (for peak patches).
        training_maxima: per conv, the per-channel maxima of the training batches watched
            since the previous snapshot, shipped along as ``training_max``.
        gradient_magnitudes: per conv, each filter's mean ``|dL/dW_c|`` at the last optimizer
            step read for this snapshot (see :mod:`~lightning_filterviz.capture.gradients`),
            shipped along as ``grad_magnitude``.
        plan: how the activations were found last time (:attr:`CapturedProbe.plan`);
            ``None``: trace every conv and make a plan (with hooks on every module).
        finite_input: whether ``inputs`` are known to hold no NaN or Inf, so that the
            statistics need not leave such positions out (see :class:`ActivationRecorder`).

    Returns:
        A :class:`CapturedProbe`; call its ``ship()`` to start the copy to host memory.
    """
    draft = SnapshotDraft(step)
    packer = TransferPacker()
    with side_pass(model):
        _capture_weights(draft, layers, packer, max_filters)
        if capture_activations and layers:
            recorder = ActivationRecorder(
                lambda activation: _reduce_maps(activation, max_images, max_filters, max_map_size),
                peak_layers=peak_layers,
                finite_input=finite_input,
            )
            context = forward_context() if forward_context is not None else contextlib.nullcontext()
            with _observation(model, layers, plan, recorder) as observed, context:
                (forward_fn or _call_model)(model, inputs)
            plan = observed.finish()
            _collect_activations(draft, recorder, observed.no_activation, packer, max_filters)
            for name, ops in (plan.through if plan is not None else {}).items():
                draft.update_layer(name, through=ops)
    for name, maxima in (training_maxima or {}).items():
        if name in draft.layers:
            packer.add(_layer_owner(name), "training_max", maxima, fresh=True)  # handed over, never updated again
    for name, magnitudes in (gradient_magnitudes or {}).items():
        if name in draft.layers:
            packer.add(_layer_owner(name), "grad_magnitude", magnitudes, fresh=True)  # a new tensor, never updated
    return CapturedProbe(draft, packer, plan)


def _capture_weights(draft: SnapshotDraft, layers: Sequence[ConvLayer], packer: TransferPacker, max_filters: int) -> None:
    # Called inside the eval, no-grad pass: a parametrized weight is computed the way the
    # model's eval forward computes it, with no power-iteration step or buffer update.
    for layer in layers:
        module = layer.module
        rgb = module.in_channels == 3 and module.groups == 1
        # The weight arrives with the copy to host memory (InFlightSnapshot.wait).
        draft.layers[layer.name] = LayerCapture(
            layer.name, module.out_channels, weight=None, rgb=rgb, frozen=is_frozen(module)  # type: ignore[arg-type]
        )
        weight = module.weight
        # Sliced only where there is something to cut: each slice is a dispatched op, per layer.
        packer.add(_layer_owner(layer.name), "weight", weight if weight.shape[0] <= max_filters else weight[:max_filters])


class _Observation:
    """How one probe forward observes the activations: per the plan, or by tracing everything."""

    def __init__(self, layers: Sequence[ConvLayer], plan: Optional[ProbePlan], recorder: ActivationRecorder) -> None:
        self.layers = layers
        self.plan = plan
        self.recorder = recorder
        names = {layer.name for layer in layers}
        traced = names if plan is None else names & set(plan.traced)
        self.tracer = ActivationTracer(recorder) if traced else None
        self.traced = [layer for layer in layers if layer.name in traced]
        self.tapped = {name: tap for name, tap in (plan.taps if plan is not None else {}).items() if name in names}
        self.no_activation: dict[str, str] = {}

    def finish(self) -> Optional[ProbePlan]:
        """The plan for the next pass: a new one after tracing everything; ``None`` when a
        planned conv did not show up (the model changed), so that the next pass traces anew."""
        if self.tracer is not None:
            self.tracer.finish()
            self.no_activation.update(self.tracer.no_activation)
        if self.plan is None:
            assert self.tracer is not None
            return self.tracer.plan([layer.name for layer in self.layers])
        self.no_activation.update(self.plan.no_activation)
        missing = [name for name in self.tapped if name not in self.recorder.records]
        return None if missing else self.plan


@contextlib.contextmanager
def _observation(
    model: nn.Module, layers: Sequence[ConvLayer], plan: Optional[ProbePlan], recorder: ActivationRecorder
) -> Iterator[_Observation]:
    observation = _Observation(layers, plan, recorder)
    handles = []
    try:
        for name, tap in observation.tapped.items():
            handles.append(tap.module.register_forward_hook(_tap_hook(name, tap, recorder)))
        tracer = observation.tracer
        if tracer is not None:
            for layer in observation.traced:
                handles.append(layer.module.register_forward_hook(_conv_output_hook(layer.name, tracer)))
            if plan is None:  # tell the tracer what every module returns, to find the taps
                for module in model.modules():
                    if not isinstance(module, torch.jit.ScriptModule):  # which takes no Python hooks
                        handles.append(module.register_forward_hook(_module_output_hook(tracer)))
        with tracer if tracer is not None else contextlib.nullcontext():
            yield observation
    finally:
        for handle in handles:
            handle.remove()


def _collect_activations(
    draft: SnapshotDraft,
    recorder: ActivationRecorder,
    no_activation: Mapping[str, str],
    packer: TransferPacker,
    max_filters: int,
) -> None:
    for name in draft.layers:
        record = recorder.records.get(name)
        if record is None or record.function == PRE_ACTIVATION:
            draft.update_layer(name, no_activation_reason=no_activation.get(name, NOT_RUN))
        if record is None:
            continue
        if record.function == PRE_ACTIVATION:
            draft.update_layer(name, pre_activation=True)
        else:
            draft.update_layer(name, activation=record.function, zeroing=record.zeroing)
        owner = _layer_owner(name)
        # Computed by this pass alone: on the CPU they need no copy.
        if record.channel_max is not None:
            packer.add(owner, "channel_max", record.channel_max, fresh=True)
        packer.add(owner, "channel_mean_abs", record.channel_mean_abs, fresh=True)
        packer.add(owner, "maps", record.maps, fresh=True)
        if record.features is not None:
            packer.add(owner, "features", record.features, fresh=True)
        if record.peak_index is not None:
            packer.add(owner, "peak_index", record.peak_index[:max_filters], fresh=True)
            draft.update_layer(name, output_hw=record.output_hw)


def _call_model(model: nn.Module, inputs: Any) -> Any:
    return model(inputs)


@contextlib.contextmanager
def side_pass(model: nn.Module, *, grad: bool = False) -> Iterator[None]:
    """Eval mode, untouched random generators and buffers, and (unless ``grad``) no autograd
    for the duration.

    Compiled modules run as plain Python, so hooks fire and nothing is (re)compiled. Every
    module's train/eval flag is restored afterwards, so a user's frozen BatchNorm stays frozen,
    and every buffer (see :func:`~lightning_filterviz.capture.buffers.untouched_buffers`), so
    observers and counters that record in eval mode too are as the training steps left them.
    """
    modes = [(module, module.training) for module in model.modules()]
    autograd = torch.enable_grad() if grad else torch.no_grad()
    try:
        with untouched_random_state(_cuda_devices(model)), autograd, _eager():
            _evaluation_mode(model, [module for module, _ in modes])
            with untouched_buffers(model):
                yield
    finally:
        for module, training in modes:
            if module.training != training:
                _set_training_flag(module, training)


def _evaluation_mode(model: nn.Module, modules: Sequence[nn.Module]) -> None:
    """``model.eval()``, by setting the flags directly where neither ``model.eval`` nor any
    module's ``train`` is overridden (``Module.train`` walks the tree through ``__setattr__``:
    about half a millisecond per snapshot for a ResNet-18)."""
    overridden = type(model).eval is not nn.Module.eval
    if overridden or any(type(module).train is not nn.Module.train for module in modules):
        model.eval()  # a model with its own eval() or train() (freezing a part, say) decides for itself
        return
    for module in modules:
        if module.training:
            _set_training_flag(module, False)


def _set_training_flag(module: nn.Module, training: bool) -> None:
    if type(module).__setattr__ is nn.Module.__setattr__:
        # Module.__setattr__ looks through parameters, buffers and submodules first; a plain
        # flag needs none of that, and this runs for every module at every snapshot.
        object.__setattr__(module, "training", training)
    else:  # a module that keeps the flag elsewhere (a TorchScript module keeps it in C++)
        module.training = training


def _eager() -> ContextManager[Any]:
    set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def _conv_output_hook(name: str, tracer: ActivationTracer) -> Callable[[nn.Module, Any, Any], None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, Tensor):
            tracer.track(name, output, tap=module)

    return hook


def _module_output_hook(tracer: ActivationTracer) -> Callable[[nn.Module, Any, Any], None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        tracer.note_module_output(module, output)

    return hook


def _tap_hook(name: str, tap: ActivationTap, recorder: ActivationRecorder) -> Callable[[nn.Module, Any, Any], None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, Tensor):
            # Reduced here, before an in-place activation can change the tap's output.
            recorder.record(name, tap.function, tap.zeroing, tap.activation(output), nonnegative=tap.floor >= 0)

    return hook


def _reduce_maps(activation: Tensor, max_images: int, max_channels: int, max_size: int) -> Tensor:
    """The first feature maps, float32, area-downsampled above ``max_size``: always a new
    tensor, so that an in-place op later in the forward cannot change them."""
    maps = _leading_crop(activation, (max_images, max_channels))
    if maps.dim() == 4 and max(maps.shape[-2:]) > max_size:
        height, width = maps.shape[-2:]
        scale = max_size / max(height, width)
        return _area_downsample(maps, (max(1, round(height * scale)), max(1, round(width * scale))))
    return maps.to(torch.float32, copy=True)


def _leading_crop(tensor: Tensor, limits: Sequence[int]) -> Tensor:
    """``tensor[:limits[0], :limits[1], ...]`` as one view, or ``tensor`` itself where nothing is
    cut (each slice is a dispatched op, per layer and snapshot)."""
    shape = list(tensor.shape)
    cropped = [min(size, limit) for size, limit in zip(shape, limits)]
    if cropped == shape[: len(cropped)]:
        return tensor
    # A leading crop keeps the strides and the start in memory.
    return tensor.as_strided(cropped + shape[len(cropped) :], tensor.stride())


def _area_downsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """``F.interpolate(maps, size, mode="area")``, in float32: each output pixel the mean of
    the input pixels its window covers. On the CPU as two small matrix products, since the
    pooling kernel there costs several times more (for a ratio such as 64 -> 48)."""
    if maps.device.type != "cpu":
        return F.interpolate(maps.float(), size=size, mode="area")
    rows, columns = _area_weights(maps.shape[-2], size[0]), _area_weights(maps.shape[-1], size[1])
    with torch.autocast("cpu", enabled=False):  # a probe pass under CPU autocast would use bfloat16
        return rows @ maps.float() @ columns.T


@functools.lru_cache(maxsize=64)
def _area_weights(size_in: int, size_out: int) -> Tensor:
    """``(size_out, size_in)``: row ``i`` averages the inputs of output ``i``'s window,
    ``[floor(i * in / out), ceil((i + 1) * in / out))``, as adaptive average pooling does."""
    weights = torch.zeros(size_out, size_in, dtype=torch.float32, device="cpu")  # whatever the defaults
    for index in range(size_out):
        start, end = index * size_in // size_out, -(-(index + 1) * size_in // size_out)
        weights[index, start:end] = 1.0 / (end - start)
    return weights


def _cuda_devices(model: nn.Module) -> list[int]:
    if not torch.cuda.is_initialized():  # no CUDA tensor can exist yet: skip the walk over parameters
        return []
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
