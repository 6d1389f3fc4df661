"""What each filter responds to: receptive fields, peak patches, and feature maps layer by layer.

:func:`receptive_field` measures which input pixels one output position of a conv sees,
by gradient, so it works for any architecture (pools, strides, dilation, padding, ``F.*``
calls in ``forward``). :func:`peak_patches` crops, for each filter, that field around the
position of the filter's strongest activation on the probe; :func:`response_grid` draws
each filter beside its patch. :func:`through_the_layers` shows one probe image's busiest
feature maps from the first layer to the deepest.

The drawing functions are NumPy only (like :mod:`lightning_filterviz.render`), so they can
run on the background writer's thread.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_filterviz.capture import ForwardFn, side_pass
from lightning_filterviz.records import ReceptiveField
from lightning_filterviz.render import (
    BACKGROUND_COLOUR,
    BACKGROUND_INDEX,
    COLORMAP_LEVELS,
    FRAME_COLOUR,
    FRAME_INDEX,
    GRID_PADDING,
    PANEL_PADDING,
    IndexedImage,
    _palette,
    _rgb,
    displayed_filters,
    frame_kinds,
    frame_tiles,
    normalize_filters,
    tile_grid,
    to_uint8,
)

ArrayLike = Union[Tensor, np.ndarray]

# The value (in 0..1) of patch pixels that fall outside the probe image.
OUTSIDE_GREY = 0.5

_aten = torch.ops.aten
# Backward ops of activations whose gradient is exactly zero on part of their domain.
_GATING_BACKWARDS = (
    _aten.threshold_backward,  # relu, threshold
    _aten.hardtanh_backward,  # relu6, hardtanh
    _aten.hardsigmoid_backward,
    _aten.hardswish_backward,
)


def receptive_field(
    model: nn.Module, inputs: Tensor, conv: nn.Module, forward_fn: Optional[ForwardFn] = None
) -> ReceptiveField:
    """Measure a conv's receptive field by the gradient of its output w.r.t. the input.

    The model runs once in eval mode on a copy of ``inputs[:1]`` that requires grad; the
    conv's output is taken with a temporary forward hook, and for three output positions
    near the centre (one diagonal step apart) the gradient of the sum over channels is
    taken w.r.t. the input only. The bounding box of the non-zero gradient gives the
    field; the step between boxes gives the stride.

    During those backward passes ReLU-family activations pass the gradient through
    unchanged and max pools spread it over their whole window, so neither dead units
    nor which element of a pool window won on this probe make the field smaller. The
    field is still measured with the model's current weights: a path whose gradient is
    zero anyway (weights or BatchNorm scales that are exactly zero, an adaptive max pool,
    a clamp) can make it smaller than the architectural one.

    No parameter's ``.grad`` is touched; every module's train/eval flag, the RNG state
    and the hooks are as they were afterwards.

    Args:
        model: the network.
        inputs: a batch of model inputs ``(N, C, H, W)`` on the model's device, large
            enough that the conv's output is at least 3x3 and the field of its centre
            does not cover the whole image.
        conv: the conv module (a submodule of ``model``) whose field to measure.
        forward_fn: how to run the model, ``forward_fn(model, x)``; default ``model(x)``.

    Returns:
        The conv's :class:`ReceptiveField`.

    Raises:
        ValueError: when the conv does not run on the probe, its output is not
            ``(N, C, H, W)`` of at least 3x3, its output does not depend on the input, or
            the field reaches past the image on both sides so it cannot be measured.
    """
    if not torch.is_tensor(inputs) or not torch.is_floating_point(inputs):
        raise ValueError("receptive_field needs a floating-point input tensor to differentiate w.r.t.")
    name = _module_name(model, conv)
    run = forward_fn or (lambda module, x: module(x))
    picked: dict[str, Any] = {}

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if "shape" in picked:  # a conv called twice: its first call
            return
        picked["shape"] = tuple(output.shape) if isinstance(output, Tensor) else None
        if isinstance(output, Tensor) and output.dim() == 4 and min(output.shape[-2:]) >= 3:
            cy, cx = output.shape[-2] // 2, output.shape[-1] // 2
            # Reduced now, before any in-place op (an inplace ReLU) can change the output.
            picked["centre"] = (cy, cx)
            picked["sums"] = [output[0, :, cy + step, cx + step].sum() for step in (-1, 0, 1)]

    with side_pass(model, grad=True), torch.inference_mode(False):
        x = inputs[:1].detach().clone().requires_grad_(True)
        with _user_hooks_hidden(model):
            handle = conv.register_forward_hook(hook)
            try:
                with torch.enable_grad():
                    run(model, x)
            finally:
                handle.remove()
        if "shape" not in picked:
            raise ValueError(f"Conv {name!r} did not run on the probe, so its receptive field cannot be measured.")
        if "sums" not in picked:
            raise ValueError(
                f"Conv {name!r} gives an output of shape {picked['shape']} on a probe of shape "
                f"{tuple(x.shape)}; measuring its receptive field needs an (N, C, H, W) output of at "
                "least 3x3: use a larger input."
            )
        boxes = [_gradient_box(total, x, name) for total in picked["sums"]]
    height, width = x.shape[-2:]
    cy, cx = picked["centre"]
    fields = [
        _axis_field([box[axis] for box in boxes], [box[axis + 2] for box in boxes], extent, centre, name, label)
        for axis, extent, centre, label in ((0, height, cy, "height"), (1, width, cx, "width"))
    ]
    return ReceptiveField(
        size=(fields[0][0], fields[1][0]), stride=(fields[0][1], fields[1][1]), offset=(fields[0][2], fields[1][2])
    )


def peak_indices(activation: Tensor) -> Tensor:
    """Each filter's strongest position over a batch of activations.

    Args:
        activation: ``(N, F, H_out, W_out)`` activations of one conv (or of its activation
            function).

    Returns:
        ``(F,)`` long tensor: per filter, the flat index into ``(N, H_out, W_out)`` of its
        maximum, as :func:`peak_patches` takes it.
    """
    channels = activation.shape[1]
    return activation.detach().transpose(0, 1).reshape(channels, -1).argmax(dim=1)


def peak_patches(
    images: ArrayLike,
    peak_index: ArrayLike,
    output_hw: tuple[int, int],
    field: ReceptiveField,
    patch_pixels: int = 32,
) -> np.ndarray:
    """Crop, for each filter, the receptive field around its strongest activation.

    NumPy only: tensors are converted at the start, so this can run on a background thread.

    Args:
        images: the probe images ``(N, C, H, W)``, ``C`` 1 or 3.
        peak_index: ``(F,)`` per filter, the flat index into ``(N, H_out, W_out)`` of its
            maximal activation (see :func:`peak_indices`).
        output_hw: ``(H_out, W_out)``, the conv's output size.
        field: the conv's receptive field.
        patch_pixels: side of each returned patch in pixels.

    Returns:
        ``(F, patch_pixels, patch_pixels, 3)`` ``uint8``: each patch is the field's box cut
        from that probe image (the part outside the image grey), min-max normalized over the
        part inside, grey images repeated to RGB, resized (nearest) to ``patch_pixels``. Row
        ``i`` of a patch shows box row ``i * box_height // patch_pixels``, and likewise for
        columns.

    Raises:
        ValueError: for images that are not ``(N, 1 or 3, H, W)``, a non-positive
            ``patch_pixels``, or a peak index outside ``(N, H_out, W_out)``.
    """
    images = np.nan_to_num(_to_numpy(images).astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    indices = _to_numpy(peak_index).astype(np.int64, copy=False).reshape(-1)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"peak_patches needs (N, 1 or 3, H, W) images, got shape {images.shape}.")
    if patch_pixels < 1:
        raise ValueError(f"patch_pixels must be positive, got {patch_pixels}.")
    count, _, height, width = images.shape
    positions = count * output_hw[0] * output_hw[1]
    if indices.size and (indices.min() < 0 or indices.max() >= positions):
        raise ValueError(f"Peak indices must lie in [0, {positions}) for {count} images of {output_hw} outputs.")
    patches = np.empty((len(indices), patch_pixels, patch_pixels, 3), dtype=np.uint8)
    for filter_index, (image, y, x) in enumerate(zip(*np.unravel_index(indices, (count, *output_hw)))):
        top, left, bottom, right = field.box(int(y), int(x))
        patch = np.full((3, bottom - top, right - left), OUTSIDE_GREY, dtype=np.float32)
        inner_top, inner_left = max(top, 0), max(left, 0)
        inner_bottom, inner_right = min(bottom, height), min(right, width)
        if inner_bottom > inner_top and inner_right > inner_left:
            crop = images[image, :, inner_top:inner_bottom, inner_left:inner_right]
            unit = normalize_filters(crop[None], "filter")[0]
            patch[:, inner_top - top : inner_bottom - top, inner_left - left : inner_right - left] = unit
        patches[filter_index] = to_uint8(_resize_nearest(patch.transpose(1, 2, 0), patch_pixels, patch_pixels))
    return patches


def response_grid(
    weight: ArrayLike, rgb: bool, patches: np.ndarray, columns: Optional[int] = None
) -> np.ndarray:
    """Draw each filter beside the image patch it responds to most.

    Each pair is the filter (normalized on its own, as ``weight_grid``'s ``"filter"``
    mode draws it, resized nearest to the patch size) and its peak patch, each in a
    one-pixel grey frame, ``GRID_PADDING`` apart; pairs are ``PANEL_PADDING`` apart on a
    white background, laid out row by row.

    Args:
        weight: ``(F, C_in, kH, kW)`` filters; the first ``len(patches)`` are drawn.
        rgb: whether the filters see an RGB image (drawn in colour); otherwise each filter
            shows its strongest input-channel slice in grey.
        patches: ``(P, h, w, 3)`` ``uint8`` peak patches, see :func:`peak_patches`.
        columns: pairs per row; default a near-square image.

    Returns:
        An ``(H, W, 3)`` ``uint8`` image.

    Raises:
        ValueError: with no patches, fewer filters than patches, or patches that are not
            ``(P, h, w, 3)``.
    """
    patches = np.asarray(patches, dtype=np.uint8)
    if patches.ndim != 4 or patches.shape[-1] != 3:
        raise ValueError(f"response_grid needs (P, h, w, 3) patches, got shape {patches.shape}.")
    weight = _to_numpy(weight).astype(np.float32, copy=False)
    count, height, width = patches.shape[:3]
    if count == 0:
        raise ValueError("response_grid needs at least one patch.")
    if len(weight) < count:
        raise ValueError(f"response_grid got {count} patches but only {len(weight)} filters.")
    shown = displayed_filters(np.nan_to_num(weight[:count], nan=0.0, posinf=0.0, neginf=0.0), rgb)
    filters = to_uint8(normalize_filters(shown, "filter")).transpose(0, 2, 3, 1)
    if filters.shape[-1] == 1:
        filters = np.repeat(filters, 3, axis=-1)
    filters = np.stack([_resize_nearest(tile, height, width) for tile in filters])
    frame = {FRAME_INDEX: _rgb(FRAME_COLOUR)}
    kinds = frame_kinds(count)
    background = _rgb(BACKGROUND_COLOUR)
    framed_filters, framed_patches = frame_tiles(filters, kinds, frame), frame_tiles(patches, kinds, frame)
    gap = np.broadcast_to(background, (count, framed_patches.shape[1], GRID_PADDING, 3))
    pair_tiles = np.concatenate([framed_filters, gap, framed_patches], axis=2)
    nrow = columns if columns is not None else pair_columns(count)
    return tile_grid(pair_tiles, max(1, nrow), PANEL_PADDING, background)


def pair_columns(count: int) -> int:
    """Columns for a near-square :func:`response_grid` of ``count`` pairs (each twice as wide as tall)."""
    return max(1, math.ceil(math.sqrt(count / 2)))


def through_the_layers(
    maps: dict[str, ArrayLike], channels: int = 4, height: int = 48, colormap: str = "viridis"
) -> IndexedImage:
    """One probe image's busiest feature maps, one column per layer, early layers left.

    Per layer the ``channels`` channels with the largest mean activation are shown, the
    largest at the top, normalized together (min..max over the shown channels of that
    layer) and coloured with ``colormap``. Tiles are ``GRID_PADDING`` white pixels apart;
    a layer with fewer channels leaves white space below its column.

    Args:
        maps: layer name -> ``(C, H, W)`` feature maps of one probe image, in the order the
            columns are drawn.
        channels: channels shown per layer.
        height: side of each (square) tile; maps are resized to it with nearest neighbour.
        colormap: a matplotlib colormap name.

    Returns:
        An :class:`~lightning_filterviz.render.IndexedImage` (``.to_rgb()`` for pixels) of
        ``min(channels, most channels of a layer)`` rows and ``len(maps)`` columns of tiles.

    Raises:
        ValueError: with no layers, ``channels`` or ``height`` below 1, or a map that is
            not ``(C, H, W)``.
    """
    if not maps:
        raise ValueError("through_the_layers needs at least one layer.")
    if channels < 1 or height < 1:
        raise ValueError(f"channels and height must be positive, got {channels} and {height}.")
    columns = []
    for name, layer_maps in maps.items():
        values = _to_numpy(layer_maps).astype(np.float32, copy=False)
        if values.ndim != 3 or values.shape[0] == 0:
            raise ValueError(f"through_the_layers needs (C, H, W) maps; layer {name!r} has shape {values.shape}.")
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        busiest = np.argsort(-values.mean(axis=(1, 2)), kind="stable")[:channels]
        shown = normalize_filters(values[busiest][None], "layer")[0]
        levels = np.rint(shown * (COLORMAP_LEVELS - 1)).astype(np.uint8)
        columns.append([_resize_nearest(level[..., None], height, height) for level in levels])
    rows = max(len(column) for column in columns)
    # A palette image: a third of the bytes of RGB, and the colormap is its palette.
    background = np.array([BACKGROUND_INDEX], dtype=np.uint8)
    blank = np.broadcast_to(background, (height, height, 1))
    tiles = [column[row] if row < len(column) else blank for row in range(rows) for column in columns]
    grid = tile_grid(np.stack(tiles), len(columns), GRID_PADDING, background)
    return IndexedImage(np.ascontiguousarray(grid[..., 0]), _palette(colormap))


# ---------------------------------------------------------------- helpers


def _to_numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach()
        if values.dtype == torch.bfloat16:  # NumPy has no bfloat16
            values = values.float()
        return values.cpu().numpy()
    return np.asarray(values)


def _resize_nearest(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an ``(h, w, ...)`` array: output row ``i`` is input row ``i * h // height``."""
    rows = np.arange(height) * image.shape[0] // height
    cols = np.arange(width) * image.shape[1] // width
    return image[rows][:, cols]


# The per-module hook tables of ``nn.Module`` (those missing in an older torch are skipped).
_HOOK_TABLES = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


@contextlib.contextmanager
def _user_hooks_hidden(model: nn.Module) -> Iterator[None]:
    """The model's own module hooks out of the way for the duration, put back afterwards.

    The receptive field is a property of the architecture; this extra forward and backward
    must not look like a training or eval step to the user's hooks (counters, loggers,
    feature caches). Weights that hooks compute (old-style pruning and spectral norm) stay
    as their module's last forward left them.
    """
    saved = []
    for module in model.modules():
        for table in _HOOK_TABLES:
            hooks = getattr(module, table, None)
            if isinstance(hooks, dict) and hooks:
                saved.append((module, table, hooks))
                object.__setattr__(module, table, type(hooks)())
    try:
        yield
    finally:
        for module, table, hooks in saved:
            object.__setattr__(module, table, hooks)


def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next((name for name, candidate in model.named_modules() if candidate is module), type(module).__name__)


class _ArchitecturalBackward(TorchDispatchMode):
    """Backward passes in which gates do not hide inputs.

    ReLU-family activations pass the gradient through wherever they are, and a max pool
    sends it to every element of its window rather than to the one that won.
    """

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in _GATING_BACKWARDS:
            return args[0].clone()
        if packet is _aten.max_pool2d_with_indices_backward:
            return _spread_pool_gradient(*args, **kwargs)
        return func(*args, **kwargs)


def _spread_pool_gradient(
    grad_output: Tensor,
    source: Tensor,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    ceil_mode: bool,
    indices: Tensor,
) -> Tensor:
    """A max pool's input gradient as if every window element had won."""
    kernel = _pair(kernel_size)
    step = _pair(stride) if len(stride) else kernel
    pad, spacing = _pair(padding), _pair(dilation)
    batched = grad_output.dim() == 4
    grad = grad_output if batched else grad_output[None]
    channels = grad.shape[1]
    ones = grad.new_ones(channels, 1, *kernel)
    spread = F.conv_transpose2d(grad, ones, stride=step, dilation=spacing, groups=channels)
    # Full transposed conv: index i + padding is input pixel i.
    spread = spread[..., pad[0] :, pad[1] :]
    height, width = source.shape[-2:]
    spread = spread[..., :height, :width]
    spread = F.pad(spread, (0, width - spread.shape[-1], 0, height - spread.shape[-2]))
    return spread if batched else spread[0]


def _pair(values: Any) -> tuple[int, int]:
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    return (int(values[0]), int(values[-1]))


def _gradient_box(total: Tensor, x: Tensor, name: str) -> tuple[int, int, int, int]:
    """Bounding box ``(top, left, bottom, right)`` of the input pixels ``total`` depends on."""
    if not total.requires_grad:
        raise ValueError(f"The output of conv {name!r} does not depend on the input (it carries no gradient).")
    with _ArchitecturalBackward():
        (grad,) = torch.autograd.grad(total, x, retain_graph=True, allow_unused=True)
    if grad is None:
        raise ValueError(f"The output of conv {name!r} does not depend on the input.")
    reach = grad.detach().abs().sum(dim=(0, 1)) != 0
    rows, cols = torch.nonzero(reach.any(dim=1)).flatten(), torch.nonzero(reach.any(dim=0)).flatten()
    if len(rows) == 0:
        raise ValueError(
            f"The output of conv {name!r} has zero gradient w.r.t. every input pixel on this probe "
            "(zero weights or zero BatchNorm scales on every path)."
        )
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _axis_field(
    starts: list[int], ends: list[int], extent: int, centre: int, name: str, label: str
) -> tuple[int, int, int]:
    """Size, stride and offset along one axis from the boxes of positions ``centre - 1 .. centre + 1``.

    A start at 0 or an end at ``extent`` may be clipped by the image border; only unclipped
    edges are used.
    """
    before, middle, after = range(3)
    if starts[middle] > 0:
        stride = starts[after] - starts[middle]
    elif ends[middle] < extent:
        stride = ends[middle] - ends[before]
    else:
        stride = None
    if stride is not None and stride < 1:
        raise ValueError(
            f"Neighbouring outputs of conv {name!r} do not see inputs a whole number of pixels apart along "
            f"its {label} (an upsampling before it?), so its receptive field is not a regular grid."
        )
    start: Optional[int] = starts[middle]
    end: Optional[int] = ends[middle]
    if start == 0:  # perhaps clipped: one step further in, the box is shifted by one stride
        start = starts[after] - stride if stride is not None and starts[after] > 0 else None
    if end == extent:
        end = ends[before] + stride if stride is not None and ends[before] < extent else None
    if stride is None or start is None or end is None:
        raise ValueError(
            f"The receptive field of conv {name!r} is too large for the probe's {label} ({extent} pixels) "
            "to be measured: use a larger input."
        )
    return end - start, stride, start - centre * stride
