"""One probe pass: hooks in, eval and no_grad, per-channel reductions and capped maps out.

Everything the pass returns is a small float32 CPU tensor detached from autograd; every
hook it adds is removed, and every module's train/eval flag and the RNG state are
restored, whether the pass succeeds or raises.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, ContextManager, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_filterviz.discovery import ActivationTracer, ConvLayer

ForwardFn = Callable[[nn.Module, Any], Any]


@dataclass
class LayerCapture:
    """One conv layer at one snapshot.

    Attributes:
        name: the conv's qualified module name.
        out_channels: number of filters in the layer.
        weight: the first ``max_filters`` filters, ``(F, C_in / groups, kH, kW)``.
        activation: name of the activation function, or ``None`` when the conv's output
            reaches no activation (a residual sum, a concatenation, the model output).
        no_activation_reason: why there is no activation, when there is none.
        zeroing: whether the activation floors at zero (ReLU family), so "dead" applies.
        rgb: whether the filters see an RGB image (3 input channels, one group), so they
            are drawn in colour.
        channel_max: per-filter maximum of the activation over the probe, ``(out_channels,)``.
        channel_mean_abs: per-filter mean absolute activation, ``(out_channels,)``.
        maps: capped feature maps ``(images, F, H, W)``.
        peak_index: per drawn filter, the flat index into ``(N, H, W)`` of its strongest
            activation on the whole probe.
        output_hw: the activation's spatial size ``(H, W)`` before any downsampling.
    """

    name: str
    out_channels: int
    weight: Tensor
    activation: Optional[str] = None
    no_activation_reason: Optional[str] = None
    zeroing: bool = False
    rgb: bool = False
    channel_max: Optional[Tensor] = None
    channel_mean_abs: Optional[Tensor] = None
    maps: Optional[Tensor] = None
    peak_index: Optional[Tensor] = None
    output_hw: Optional[tuple[int, int]] = None


@dataclass
class Snapshot:
    """Everything captured at one training step, ready for statistics and rendering.

    Attributes:
        step: the training step.
        layers: conv name -> what was captured of it.
        probe_images: the probe's input images ``(N, C, H, W)``, when they are to be drawn.
        dead_filters: conv name -> dead filter indices after this snapshot.
        dormant_filters: conv name -> dormant filter indices at this snapshot.
        symmetric_ranges: conv name -> the fixed half-range of ``"symmetric"`` normalization.
        layer_table: a Markdown table of the watched convs and their activations, when it
            is to be logged (the first snapshot).
        drift: conv name -> per-filter cosine distance from the initial filters.
        weight_norm_ratio: conv name -> per-filter weight norm over the initial one.
        filmstrips: conv name -> rows of the filmstrip, when it is to be drawn.
        probe_inputs: the probe images ``(N, C, H, W)`` on the CPU, when peak patches are drawn.
        receptive_fields: conv name -> its receptive field, for the layers whose peak patches are drawn.
        draw_views: whether the costlier views (peak patches, through the layers) are drawn.
    """

    step: int
    layers: dict[str, LayerCapture] = field(default_factory=dict)
    probe_images: Optional[Tensor] = None
    dead_filters: dict[str, list[int]] = field(default_factory=dict)
    dormant_filters: dict[str, list[int]] = field(default_factory=dict)
    symmetric_ranges: dict[str, float] = field(default_factory=dict)
    layer_table: Optional[str] = None
    drift: dict[str, Tensor] = field(default_factory=dict)
    weight_norm_ratio: dict[str, Tensor] = field(default_factory=dict)
    filmstrips: dict[str, list[Any]] = field(default_factory=dict)
    probe_inputs: Optional[Tensor] = None
    receptive_fields: dict[str, Any] = field(default_factory=dict)
    draw_views: bool = False


def capture_snapshot(
    model: nn.Module,
    inputs: Any,
    layers: Sequence[ConvLayer],
    step: int,
    *,
    forward_fn: Optional[ForwardFn] = None,
    max_filters: int = 64,
    max_images: int = 2,
    max_map_size: int = 48,
    capture_activations: bool = True,
    forward_context: Optional[Callable[[], ContextManager[Any]]] = None,
    peak_layers: Collection[str] = (),
) -> Snapshot:
    """Run the probe through ``model`` once and capture the watched conv layers.

    Args:
        model: the network, run eagerly in eval mode under ``torch.no_grad``.
        inputs: the model input, already on the model's device.
        layers: the convs to capture (see :func:`~lightning_filterviz.discovery.select_conv_layers`).
        step: the training step this snapshot belongs to.
        forward_fn: how to run the model, ``forward_fn(model, inputs)``; default ``model(inputs)``.
        max_filters: filters (and activation channels) kept for drawing per layer.
        max_images: probe images whose feature maps are kept.
        max_map_size: feature maps larger than this (height or width) are area-downsampled.
        capture_activations: run the probe forward; with ``False`` only weights are taken.
        forward_context: a context manager factory around the forward (mixed precision).
        peak_layers: layers whose channels' strongest positions are recorded (for peak patches).

    Returns:
        A :class:`Snapshot` of small detached CPU tensors.
    """
    snapshot = Snapshot(step=step)
    for layer in layers:
        module = layer.module
        weight = module.weight.detach()[:max_filters].float().cpu().clone()
        rgb = module.in_channels == 3 and module.groups == 1
        snapshot.layers[layer.name] = LayerCapture(layer.name, module.out_channels, weight, rgb=rgb)
    if not capture_activations or not layers:
        return snapshot

    tracer = ActivationTracer(
        lambda activation: _reduce_maps(activation, max_images, max_filters, max_map_size), peak_layers=peak_layers
    )
    run = forward_fn or _call_model
    context = forward_context() if forward_context is not None else contextlib.nullcontext()
    with _side_pass(model), _tracking_hooks(layers, tracer), context, tracer:
        run(model, inputs)
    tracer.finish()

    for name, capture in snapshot.layers.items():
        record = tracer.records.get(name)
        if record is None:
            capture.no_activation_reason = tracer.no_activation.get(name, "the conv did not run on the probe")
            continue
        capture.activation = record.function
        capture.zeroing = record.zeroing
        capture.channel_max = record.channel_max.cpu()
        capture.channel_mean_abs = record.channel_mean_abs.cpu()
        capture.maps = record.maps.cpu()
        if record.peak_index is not None:
            capture.peak_index = record.peak_index[:max_filters].cpu()
            capture.output_hw = record.output_hw
    return snapshot


@contextlib.contextmanager
def track_training_batch(layers: Sequence[ConvLayer]) -> Iterator[dict[str, Tensor]]:
    """Record each watched conv's per-channel activation maximum during a training forward.

    Yields a dict that, after the block, maps conv name -> ``(out_channels,)`` float32
    maxima on the model's device (only convs with a ReLU-family activation). Only that
    reduction is kept: no activation tensor outlives its op, and autograd is untouched.
    """
    tracer = ActivationTracer(reduce_maps=None)
    maxima: dict[str, Tensor] = {}
    try:
        with _tracking_hooks(layers, tracer), tracer:
            yield maxima
    finally:
        tracer.finish()
        maxima.update({name: record.channel_max for name, record in tracer.records.items() if record.zeroing})


def _call_model(model: nn.Module, inputs: Any) -> Any:
    return model(inputs)


@contextlib.contextmanager
def _side_pass(model: nn.Module) -> Iterator[None]:
    """Eval mode, no autograd and an untouched RNG for the duration; every flag restored after."""
    modes = [(module, module.training) for module in model.modules()]
    devices = _cuda_devices(model)
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad(), _eager():
            model.eval()
            yield
    finally:
        for module, training in modes:
            module.training = training


def _eager() -> ContextManager[Any]:
    """Run compiled modules as plain Python, so hooks fire and nothing is (re)compiled."""
    set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


@contextlib.contextmanager
def _tracking_hooks(layers: Sequence[ConvLayer], tracer: ActivationTracer) -> Iterator[None]:
    handles = []
    try:
        for layer in layers:
            handles.append(layer.module.register_forward_hook(_tracking_hook(layer.name, tracer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _tracking_hook(name: str, tracer: ActivationTracer) -> Callable[[nn.Module, Any, Any], None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, Tensor):
            tracer.track(name, output)

    return hook


def _reduce_maps(activation: Tensor, max_images: int, max_channels: int, max_size: int) -> Tensor:
    maps = activation[:max_images, :max_channels]
    if maps.dim() != 4:
        return maps.detach().float().clone()
    height, width = maps.shape[-2:]
    if max(height, width) > max_size:
        scale = max_size / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        maps = F.interpolate(maps.float(), size=size, mode="area")
    return maps.detach().float().clone()


def _cuda_devices(model: nn.Module) -> list[int]:
    if not torch.cuda.is_initialized():  # no CUDA tensor can exist yet: skip the walk over parameters
        return []
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
