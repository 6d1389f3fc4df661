"""Feature visualization: for each chosen filter of a conv layer, an image that excites it.

Following Olah, Mordvintsev and Schubert, "Feature Visualization" (Distill, 2017): an input
image is optimized by gradient ascent so that one filter's mean response grows. Left alone,
that optimization finds high-frequency patterns that fool the network rather than show what
the filter looks for; what this module does against that, and why:

- **Fourier parameterization.** The image is the inverse real FFT of a learnable spectrum
  whose coefficients are scaled by ``1 / frequency``. Plain gradient steps on pixels favour
  high frequencies; on this spectrum every frequency moves at a rate that matches natural
  images' ``1 / f`` spectrum, so the images come out smooth and recognisable (the article's
  "preconditioning" section).
- **Colour decorrelation** (3-channel inputs). The optimized channels are mixed by the square
  root of the colour covariance of the user's own probe images, so a step moves along the
  colour directions the data has (bright/dark, warm/cool), not along raw R, G, B that real
  images never change independently. The covariance is the data's, not a fixed ImageNet
  matrix: a model trained on other images gets its own colours.
- **Sigmoid to [0, 1], then the user's normalization.** The image stays a displayable image;
  it reaches the model as ``low_c + (high_c - low_c) * image_c``, with ``low``/``high`` taken
  from the probe (which is already normalized as the model sees it), so the model sees
  values in the range its data has.
- **Random transforms each step** (small translation, scale and rotation, one
  ``grid_sample`` per step for the whole batch): a pattern that only excites the filter at
  one exact pixel alignment is not kept, which is the article's "transformation robustness".
- **Rectified objective, redirected where silent.** The response is the conv's output
  through normalization, before the ReLU (the caller passes that "tap" module), and the
  objective is the mean of its ReLU: a first-layer filter's plain mean response is linear
  in the image and only sees its mean colour, so it would be raised by one flat colour; the
  rectified mean is raised by the filter's pattern, repeated (stripes for an edge filter).
  Where an image's response is nowhere positive the ReLU has no gradient, and the plain
  mean is climbed instead until some position fires (Lucid's "redirected" ReLU, for
  ascent): a filter silent on every input still moves.
- **Stopped forward.** A hook on the target raises as soon as the target's output exists,
  so nothing after it runs: for an early layer of a deep network that skips most of the
  forward and all of its backward, and an in-place ReLU after the target cannot rewrite the
  recorded response. Where the caller names the conv and the target's output is an affine
  function of the conv's input (a plain conv, alone or through a batch norm in eval mode),
  the forward stops one module earlier, at the conv's input, and each image's own channel
  is computed from there with its own filter alone: the layer's full conv and its
  normalization no longer run at each step.
- **The stem's input gradient by the faster kernel.** On the CPU, where the model's first
  conv reads the input and nothing else does, the backward stops at that conv's output and
  its input gradient is computed with whichever of oneDNN's and ATen's kernels was faster
  when timed once (:class:`_StemGradient`): for ResNet's 7x7 stride-2 stem ATen's.

All filters of the layer are optimized together (image ``i`` has its own objective, filter
``channels[i]``); the loss is minus the sum of the objectives, so the images do not interact.
On an accelerator the model's part of a step is one batch. On the CPU it runs in chunks of
about ``CPU_CHUNK_PIXELS`` input pixels (8 images at 128 pixels) with a channels-last input:
a chunk's activations stay in the caches and are reused by the allocator instead of being
fresh pages at every step, and channels-last convolution backwards and max pooling are
faster there; together about 35 % less time per step than one contiguous batch of 64. The
result is the same up to float rounding.

Cost: ``steps`` forwards of ``len(channels)`` images up to the target, and their backwards
to the input only (``torch.autograd.grad`` asks for the input alone, so no weight gradient
is computed), plus an FFT, a ``grid_sample`` and an Adam step on the spectrum. The model's
convolutions are most of it. Measured on 2 CPU cores (torch 2.14, ``benchmarks/feature_vis.py``),
64 filters at 128 pixels and 256 steps of a ResNet-18, each conv given (so the forward
stops at its input): 62 to 64 s for ``layer1.0.conv1``, 66 to 109 s for the later convs of
``layer1`` (each conv further in adds its own forward and backward; the machine's speed
moves these by up to a fifth, see docs/cost.md). Run it off the
training loop's critical path.

The model is left exactly as it was: everything runs inside
:func:`~lightning_filterviz.capture.probe_capture.side_pass` (eval mode and every module's
mode restored, torch's, Python's and NumPy's random generators and every buffer untouched),
the hook is removed whatever happens, no parameter's ``requires_grad`` or ``.grad`` is
touched, and the random numbers come from a private generator seeded with ``seed``.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, ContextManager, NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_filterviz.capture.probe_capture import side_pass

__all__ = ["visualize_filters"]

LEARNING_RATE = 0.05
# Standard deviation of the spectrum's initial noise: a nearly grey start, so that what the
# image becomes is the filter's doing, not the noise's.
INIT_STD = 0.01
# Largest translation, in pixels, at a 224-pixel image; scaled with the image's size.
JITTER_AT_224 = 8.0
SCALE_RANGE = (0.95, 1.05)
ROTATION_DEGREES = 5.0
# Percentiles of each input channel over the probe that the display range [0, 1] maps onto.
RANGE_PERCENTILES = (0.005, 0.995)
# Smallest eigenvalue kept in the colour covariance: a probe whose colours span fewer than
# three directions (grey images) still gives an invertible, finite square root.
COVARIANCE_EPS = 1e-4
# Input pixels per chunk of the model's part on the CPU (8 images of 128 x 128): see the module docstring.
# Measured on 2 cores for ResNet-18's layer1: 4 to 8 images per chunk are fastest, 64 at once about 40 % slower.
CPU_CHUNK_PIXELS = 8 * 128 * 128
# Per set of a stem's shapes, whether ATen's own kernel computed its input gradient faster than
# autograd's choice (oneDNN's) when first timed (see _StemGradient).
_ATEN_IS_FASTER: dict[tuple[Any, ...], bool] = {}
# torch.quantile refuses inputs above 2**24 elements: larger probes are subsampled for it.
_QUANTILE_LIMIT = 2**24


class _TargetReached(Exception):
    """Raised by the hook on the target to stop the forward there; never leaves this module."""


def visualize_filters(
    model: nn.Module,
    target: nn.Module,
    channels: Sequence[int],
    probe: Tensor,
    *,
    steps: int = 256,
    seed: int = 0,
    call: Optional[Callable[[nn.Module, Tensor], Any]] = None,
    conv: Optional[nn.Module] = None,
) -> np.ndarray:
    """Optimize one image per channel of ``target``'s output so that it raises that channel's
    rectified mean (the mean of its ReLU; the plain mean while it is nowhere positive).

    Args:
        model: the network; left exactly as it was (modes, parameters, their gradients,
            buffers, random generators, hooks).
        target: the module whose output is the filters' response: the conv's "tap", i.e. the
            conv itself or the normalization module right after it, whose output is the input
            of the activation. Its output must be one 4-d tensor ``(N, C, H, W)``.
        channels: the output channels of ``target`` to visualize, one image each, in this order.
        probe: model input as the model sees it, ``(N, C, H, W)``, floating point, already
            normalized by the user's transforms. The images are made at its size, on its
            device, and its value range and colour covariance define the display mapping.
        steps: optimization steps (each a forward up to ``target`` and a backward).
        seed: seeds the private generator of the initial spectrum and the random transforms.
        call: how to run the model on an input, ``call(model, x)``; default ``model(x)``.
        conv: the conv whose filters ``target``'s channels are (``target`` itself or the
            conv it normalizes). Optional; where given and ``target``'s output is an affine
            function of the conv's input (a plain ``nn.Conv2d`` without hooks, and ``target``
            the conv or a ``BatchNorm2d`` using its running statistics, fed by it: checked
            on the probe), each step's forward stops at the conv's input and each image's
            channel is computed from there with its own filter only, instead of the whole
            conv and its normalization. The images are the same up to float rounding.

    Returns:
        ``uint8`` array ``(len(channels), H, W, 3)`` for a 3-channel input, ``(len(channels),
        H, W, 1)`` for any other (a 1-channel input's channel, else the first channel): the
        optimized images as displayed, ``round(255 * image)``.

    Raises:
        TypeError: ``probe`` is not a floating-point tensor, or ``steps``, ``seed`` or a channel
            is not an int.
        ValueError: ``probe`` is not 4-d or empty, ``steps < 1``, ``channels`` is empty or out
            of range of the target's output channels, the forward never reaches ``target``,
            ``target``'s output is not one 4-d tensor, or it carries no gradient back to the
            input (computed under ``torch.no_grad()``).

    Example::

        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        >>> probe = torch.rand(4, 3, 16, 16)
        >>> images = visualize_filters(model, model[1], [0, 1, 2, 3], probe, steps=8)
        >>> images.shape, images.dtype
        ((4, 16, 16, 3), dtype('uint8'))
    """
    channel_list = _checked_channels(channels)
    _check_arguments(probe, steps, seed)
    _check_channel_range(channel_list, _declared_channels(target), target, model)
    run = call if call is not None else _call_model
    with side_pass(model, grad=True), torch.inference_mode(False), _without_autocast(probe.device):
        images = _optimize(model, target, conv, channel_list, probe, steps, seed, run)
    return _as_display_array(images)


def _optimize(
    model: nn.Module,
    target: nn.Module,
    conv: Optional[nn.Module],
    channels: list[int],
    probe: Tensor,
    steps: int,
    seed: int,
    run: Callable[[nn.Module, Tensor], Any],
) -> Tensor:
    """The optimization itself: the final display images ``(F, C, H, W)`` in [0, 1], float32."""
    count, (in_channels, height, width) = len(channels), probe.shape[1:]
    device = probe.device
    # One private CPU generator for everything random: the same seed draws the same start and
    # the same transforms on any device, and no global generator is drawn from.
    generator = torch.Generator(device="cpu").manual_seed(seed)
    low, span = _input_range(probe)
    colour = _colour_mixing(probe, low, span) if in_channels == 3 else None
    image_of = _ImageParameterization(count, in_channels, height, width, colour, generator, device)
    motions = _random_motions(steps, count, height, width, generator).to(device)
    chosen = torch.tensor(channels, device=device)
    optimizer = torch.optim.Adam([image_of.spectrum], lr=LEARNING_RATE)
    size = _chunk_size(count, height, width, device)
    with _StoppedForward(model, target, run) as forward, torch.no_grad():
        first_input = low + span * image_of()[:1]
        layout, sample, response = _working_layout(forward, first_input, _forward_dtype(model, target, probe), channels)
    # Where the target's response is an affine function of the conv's input, the forward can stop there.
    tail = _chosen_channels_tail(model, conv, target, run, sample, response, chosen)
    if tail is None or conv is None:
        stop_at = _StoppedForward(model, target, run)
    else:
        stop_at = _StoppedForward(model, conv, run, at_input=True)
    stem = _find_stem(model, target, run, sample)
    with stop_at as forward, _StemGradient(stem) as stem_gradient:
        for step in range(steps):
            model_input = low + span * _transformed(image_of(), motions[step])
            # The model's part runs in chunks, each a leaf of its own: on the CPU a chunk's
            # activations stay in the caches and below the allocator's mmap threshold (a whole
            # batch's activations would be fresh pages, faulted in at every step).
            input_gradient = torch.cat(
                [
                    _input_gradient(
                        forward, model_input, slice(start, start + size), chosen, layout, tail, stem_gradient
                    )
                    for start in range(0, count, size)
                ]
            )
            # Carried back through the transforms and the parameterization to the spectrum alone.
            (gradient,) = torch.autograd.grad(model_input, [image_of.spectrum], grad_outputs=input_gradient)
            image_of.spectrum.grad = gradient
            optimizer.step()
            del model_input, input_gradient, gradient  # free this step's graph before the next is built
    with torch.no_grad():
        return image_of()


class _StoppedForward:
    """The model's forward, stopped where ``module`` has computed its output (or, with
    ``at_input``, where ``module`` is about to run).

    A context manager: entering adds a hook on ``module`` that keeps its output (its first
    input) and raises :class:`_TargetReached`, so nothing after it runs (and an in-place ReLU
    after it cannot rewrite what was kept); leaving removes the hook, also after an error.
    """

    def __init__(
        self, model: nn.Module, module: nn.Module, run: Callable[[nn.Module, Tensor], Any], *, at_input: bool = False
    ) -> None:
        self.model, self.target, self.run, self.at_input = model, module, run, at_input
        self._output: Any = None
        self._fired = False
        self._handle: Optional[RemovableHandle] = None

    def __enter__(self) -> _StoppedForward:
        if self.at_input:
            self._handle = self.target.register_forward_pre_hook(self._pre_hook)
        else:
            self._handle = self.target.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        self._output, self._fired = output, True
        raise _TargetReached

    def _pre_hook(self, module: nn.Module, args: Any) -> None:
        self._output, self._fired = (args[0] if args else None), True
        raise _TargetReached

    def __call__(self, model_input: Tensor) -> Tensor:
        """The module's output (input) for ``model_input``: one 4-d tensor, still in the autograd graph."""
        self._output, self._fired = None, False
        try:
            self.run(self.model, model_input)
        except _TargetReached:
            pass
        # A forward that caught the stop itself and went on has still recorded the output.
        output, self._output = self._output, None
        if not self._fired:
            raise ValueError(
                f"The forward never reached the target module {_module_label(self.target, self.model)}: pass a "
                "module that the model's forward (or `call`) runs, e.g. the conv or the normalization right after it."
            )
        if not isinstance(output, Tensor) or output.dim() != 4:
            kind = f"a {output.dim()}-d tensor" if isinstance(output, Tensor) else type(output).__name__
            what = "received" if self.at_input else "returned"
            raise ValueError(
                f"The target module {_module_label(self.target, self.model)} {what} {kind}; feature visualization "
                "needs one 4-d tensor (N, C, H, W): pass a conv or the normalization module right after it."
            )
        return output


class _Layout(NamedTuple):
    """How the model's input is laid out for the forward: its dtype and memory format."""

    dtype: torch.dtype
    memory_format: torch.memory_format


def _working_layout(
    forward: _StoppedForward, sample: Tensor, dtype: torch.dtype, channels: list[int]
) -> tuple[_Layout, Tensor, Tensor]:
    """Run ``sample`` (one image, without autograd) up to the target, check ``channels`` against the target's
    output, and choose the input's memory format. Returns the layout, the sample in it and the
    target's output for it. The format: channels-last on the CPU, where the
    convolutions' backward and max pooling run about 20 % faster per step that way (measured
    for ResNet-18's layer1 on 2 cores); contiguous on an accelerator, or where the forward fails
    on a channels-last input (a ``view`` of an activation, say)."""
    layouts = [_Layout(dtype, torch.contiguous_format)]
    if sample.device.type == "cpu":
        layouts.insert(0, _Layout(dtype, torch.channels_last))
    for index, layout in enumerate(layouts):
        laid_out = sample.to(dtype=layout.dtype, memory_format=layout.memory_format)
        try:
            response = forward(laid_out)
        except RuntimeError:
            if index + 1 == len(layouts):
                raise
            continue
        _check_channel_range(channels, response.shape[1], forward.target, forward.model)
        return layout, laid_out, response
    raise AssertionError("unreachable: the last layout returns or raises")


def _input_gradient(
    forward: _StoppedForward,
    model_input: Tensor,
    rows: slice,
    chosen: Tensor,
    layout: _Layout,
    tail: Optional[_ChosenChannelsTail],
    stem_gradient: _StemGradient,
) -> Tensor:
    """The gradient of minus the objectives of the images ``rows`` with respect to their input, float32.

    Image ``i``'s objective is :func:`_objectives` of its own channel ``chosen[i]`` of the
    target's output; their sum is climbed, so the images do not interact. With ``tail`` the
    forward stops at the conv's input and each image's channel is computed from there. Where
    the model's first conv reads the input and nothing else does, the backward stops at that
    conv's output and :class:`_StemGradient` carries it to the input."""
    leaf = model_input[rows].detach().to(dtype=layout.dtype, memory_format=layout.memory_format).requires_grad_(True)
    stem_gradient.watch(leaf)
    reached = forward(leaf)
    if not reached.requires_grad:
        raise ValueError(
            f"The output of the target module {_module_label(forward.target, forward.model)} carries no gradient "
            "back to the input: the forward runs it under torch.no_grad() or detaches its input. Pass a target "
            "whose output depends differentiably on the model's input."
        )
    # Only the leaf is asked for: no weight gradient is computed, no parameter's .grad is touched.
    selected = tail(reached, rows) if tail is not None else _selected_channels(reached, chosen[rows])
    loss = -_objectives(selected).sum()
    stem_output = stem_gradient.sole_reader_output(loss)
    if stem_output is None:
        (gradient,) = torch.autograd.grad(loss, [leaf])
    else:
        (output_gradient,) = torch.autograd.grad(loss, [stem_output])
        gradient = stem_gradient.input_gradient(output_gradient, leaf)
    return gradient.float()


def _find_stem(
    model: nn.Module, target: nn.Module, run: Callable[[nn.Module, Tensor], Any], sample: Tensor
) -> Optional[nn.Conv2d]:
    """The plain conv that receives the model's input tensor itself (ResNet's ``conv1``), found
    by one forward of ``sample`` up to ``target`` without autograd; ``None`` on an accelerator
    (its conv kernels need no help), without oneDNN, where the forward transforms the input
    first, or where that conv is not a plain ``nn.Conv2d`` (one group, no dilation, numeric
    padding, no hooks: else its input gradient is not the one computed here)."""
    # Without oneDNN (not built in, or turned off by the user) autograd already uses ATen's kernel.
    if sample.device.type != "cpu" or not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return None
    readers: list[nn.Module] = []

    def note_reader(module: nn.Module, args: Any) -> None:
        if args and args[0] is sample:
            readers.append(module)

    handles = [module.register_forward_pre_hook(note_reader) for module in model.modules() if type(module) is nn.Conv2d]
    try:
        with _StoppedForward(model, target, run) as to_target, torch.no_grad():
            to_target(sample)  # the same forward already ran for this sample when its layout was chosen
    finally:
        for handle in handles:
            handle.remove()
    if len(readers) != 1:
        return None
    stem = readers[0]
    assert isinstance(stem, nn.Conv2d)  # for the type checker: only plain convs were hooked
    # ATen's im2col kernel covers plain stems: one group, no dilation, numeric padding.
    plain = stem.groups == 1 and _pair(stem.dilation) == (1, 1) and not isinstance(stem.padding, str)
    return stem if plain and _is_affine_tail(stem, stem) else None


class _StemGradient:
    """The input gradient of the model's first conv (the "stem", which reads the input image),
    computed with whichever of the CPU's two conv kernels is faster for its shapes.

    A chunk's backward mostly runs the model's convolutions, and for an RGB stem the input
    gradient can be the largest of them. Which kernel computes it faster depends on the
    stem: ``benchmarks/stem_gradient.py`` measured oneDNN's (autograd's choice on the CPU)
    1.7 to 1.8 times as slow as ATen's own for ResNet-18's 7x7 stride-2 stem at 128 px, yet
    1.6 to 2.4 times as fast for the example's 5x5 stride-1 stem with 16 filters (2 cores).
    So both are timed once per process and set of shapes, on the first chunk's own gradient,
    and the faster is kept: the backward stops at the stem's output (``torch.autograd.grad``
    asks for it), and the stem's input gradient is computed here, ATen's kernel called by
    name (no process-wide switch is touched, so other threads' convs are not affected).

    Only where the stem is the input's sole reader (checked on each chunk's graph: a model
    that also adds its input elsewhere gets autograd's whole backward) and only on the CPU.
    A context manager: the hook that records the stem's output is removed on leaving."""

    TIMED_REPEATS = 2

    def __init__(self, stem: Optional[nn.Conv2d]) -> None:
        self.stem = stem
        self._handle: Optional[RemovableHandle] = None
        self._leaf: Optional[Tensor] = None
        self._output: Optional[Tensor] = None
        self._output_version = 0

    def __enter__(self) -> _StemGradient:
        if self.stem is not None:
            self._handle = self.stem.register_forward_hook(self._record)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._leaf = self._output = None

    def watch(self, leaf: Tensor) -> None:
        """The next forward's input: the stem's output is recorded where the stem reads it."""
        self._leaf, self._output = leaf, None

    def _record(self, module: nn.Module, args: Any, output: Any) -> None:
        if args and args[0] is self._leaf and isinstance(output, Tensor):
            self._output, self._output_version = output, output._version

    def sole_reader_output(self, loss: Tensor) -> Optional[Tensor]:
        """The stem's output in this chunk's graph, where the stem is the only reader of the
        input on the way to ``loss``; else ``None`` (autograd then runs the whole backward)."""
        output, leaf = self._output, self._leaf
        if output is None or leaf is None or output.grad_fn is None or loss.grad_fn is None:
            return None
        # Rewritten in place since it was recorded (an in-place ReLU right after the stem): its
        # gradient would be the new value's, not the stem's output's.
        if output._version != self._output_version:
            return None
        accumulators = [node for node, _ in output.grad_fn.next_functions if _accumulates_into(node, leaf)]
        if len(accumulators) != 1 or _parents_of(loss.grad_fn, accumulators[0]) != [output.grad_fn]:
            return None
        return output

    def input_gradient(self, output_gradient: Tensor, leaf: Tensor) -> Tensor:
        """The stem's input gradient for ``output_gradient`` at its output, with the faster kernel."""
        return self._computed(output_gradient, leaf, self._aten_is_faster(output_gradient, leaf))

    def _aten_is_faster(self, output_gradient: Tensor, leaf: Tensor) -> bool:
        """Whether ATen's kernel is the faster, timed once per process and set of shapes: the
        two round differently, so one choice keeps a seed's images the same bit for bit in a
        process (across processes they may differ in the last bits where the two are about as fast)."""
        stem = self.stem
        assert stem is not None
        shapes = (tuple(leaf.shape), tuple(stem.weight.shape), _pair(stem.stride), _pair(stem.padding))
        key = (*shapes, leaf.dtype, leaf.is_contiguous())  # the layout changes the kernels' speed too
        if key not in _ATEN_IS_FASTER:
            autograds = self._timed(output_gradient, leaf, use_aten=False)
            try:
                atens = self._timed(output_gradient, leaf, use_aten=True)
            except RuntimeError:  # no ATen kernel for this dtype or layout: autograd's, then
                atens = math.inf
            _ATEN_IS_FASTER[key] = atens < autograds
        return _ATEN_IS_FASTER[key]

    def _timed(self, output_gradient: Tensor, leaf: Tensor, use_aten: bool) -> float:
        self._computed(output_gradient, leaf, use_aten)  # the first call allocates and plans
        start = time.perf_counter()
        for _ in range(self.TIMED_REPEATS):
            self._computed(output_gradient, leaf, use_aten)
        return time.perf_counter() - start

    def _computed(self, output_gradient: Tensor, leaf: Tensor, use_aten: bool) -> Tensor:
        """The input gradient by ATen's im2col kernel (the one autograd uses with oneDNN off),
        called by name so that no process-wide switch is touched, or by autograd's own choice."""
        stem = self.stem
        assert stem is not None  # only called where the stem's output was recorded
        stride, padding, only_the_input = _pair(stem.stride), _pair(stem.padding), [True, False, False]
        with torch.no_grad():
            if use_aten:
                kernel_size = tuple(stem.weight.shape[2:])
                gradient, _, _ = torch.ops.aten._slow_conv2d_backward.output_mask(
                    output_gradient, leaf.detach(), stem.weight, kernel_size, stride, padding, only_the_input
                )
            else:
                dilation, transposed, output_padding = _pair(stem.dilation), False, [0, 0]
                gradient, _, _ = torch.ops.aten.convolution_backward(
                    output_gradient, leaf.detach(), stem.weight, None, stride, padding, dilation, transposed,
                    output_padding, stem.groups, only_the_input,
                )
        return gradient


def _pair(value: Any) -> tuple[int, int]:
    """A conv's stride, padding or dilation as two ints (set after construction, it may be one int)."""
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _accumulates_into(node: Any, leaf: Tensor) -> bool:
    return node is not None and getattr(node, "variable", None) is leaf


def _parents_of(root: Any, target: Any) -> list[Any]:
    """The nodes of the autograd graph below ``root`` with an edge into the node ``target``, once per edge."""
    parents, seen, stack = [], set(), [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for successor, _ in node.next_functions:
            if successor is target:
                parents.append(node)
            else:
                stack.append(successor)
    return parents


def _selected_channels(response: Tensor, chosen: Tensor) -> Tensor:
    """Per image ``i``, channel ``chosen[i]`` of ``response``: ``(N, H, W)``."""
    rows = torch.arange(response.shape[0], device=response.device)
    return response[rows, chosen]


def _objectives(selected: Tensor) -> Tensor:
    """Per image, the mean over positions of its rectified response ``(N, H, W)``, float32.

    The mean of ``relu(response)``: what the activation passes on, so a filter is free to be
    negative where its pattern is absent and the image fills with its pattern rather than
    the one overall colour that raises a linear filter's plain mean most. Where an image's
    response is not positive anywhere, ReLU has no gradient there, and the plain mean is
    climbed instead until some position fires, as Lucid's "redirected" ReLU does for
    ascent: a filter silent at the start still moves."""
    selected = selected.float()
    fires = (selected > 0).flatten(1).any(dim=1)
    rectified = torch.relu(selected).mean(dim=(-2, -1))
    return torch.where(fires, rectified, selected.mean(dim=(-2, -1)))


def _chosen_channels_tail(
    model: nn.Module,
    conv: Optional[nn.Module],
    target: nn.Module,
    run: Callable[[nn.Module, Tensor], Any],
    sample: Tensor,
    response: Tensor,
    chosen: Tensor,
) -> Optional[_ChosenChannelsTail]:
    """Where ``target``'s output is an affine function of ``conv``'s input, what computes each
    image's own channel of it from that input (:class:`_ChosenChannelsTail`); else ``None``.

    One channel per image is a 64th of a 64-filter conv's work, so the conv's and its
    normalization's full forward and backward, which for an early layer are a large part of
    a step (the first conv of ResNet-18's ``layer1``: about half of the model's part), are
    skipped at every step. Affine is known from the types (:func:`_is_affine_tail`); that
    ``target`` really is fed by ``conv`` is checked on ``sample``: at the conv's input, the tail
    must give every chosen channel of ``response``, the target's output the full forward gave."""
    if conv is None or not _is_affine_tail(conv, target):
        return None
    assert isinstance(conv, nn.Conv2d)  # for the type checker: _is_affine_tail checked the type
    with torch.no_grad():
        with _StoppedForward(model, conv, run, at_input=True) as to_conv:
            try:
                conv_input = to_conv(sample)
            except ValueError:  # the forward does not run this conv: not the one the target normalizes
                return None
        tail = _ChosenChannelsTail(conv, target, chosen)
        count = len(chosen)
        try:
            recomputed = tail(conv_input.expand(count, -1, -1, -1), slice(0, count))
        except RuntimeError:  # shapes that do not chain: the target is not fed by this conv
            return None
    expected = _selected_channels(response.expand(count, -1, -1, -1), chosen)
    tolerance = 1e-5 * (1.0 + float(expected.detach().abs().float().max()))
    if recomputed.shape != expected.shape or not torch.allclose(
        recomputed.float(), expected.float(), rtol=1e-4, atol=tolerance
    ):
        return None
    return tail


class _ChosenChannelsTail:
    """``(conv_input, rows) -> (n, H, W)``: for each image ``i`` of ``rows``, its own channel
    ``chosen[i]`` of ``target(conv(conv_input))``, then the batch norm's per-channel scale and shift.

    A contiguous input (on an accelerator, or where the forward needs contiguous activations)
    is already the ``n`` images side by side as one image of ``n * C_in`` channels: one
    convolution with one group per image, each group its image's filter, computes only what
    is kept (a 64th of the conv's work for 64 filters). A channels-last input (the CPU's
    layout) would need a copy each way for that, which costs more than it saves at a chunk of
    8: there, one convolution of the ``n`` images with the ``n`` chunk's filters, of which
    image ``i`` keeps output ``i``, is ``n / out_channels`` of the conv's work (an eighth for a
    chunk of 8 and 64 filters), and the gradient reaches the layers below in their own format.
    A grouped conv's filter reads only its group's input channels: its weights are placed
    there, zeros elsewhere."""

    def __init__(self, conv: nn.Conv2d, target: nn.Module, chosen: Tensor) -> None:
        self.conv = conv
        self.weight = _dense_filters(conv, chosen)
        self.bias = conv.bias[chosen] if conv.bias is not None else None
        self.scale, self.shift = _normalization_affine(target, conv, chosen)

    def __call__(self, conv_input: Tensor, rows: slice) -> Tensor:
        conv = self.conv
        bias = self.bias[rows] if self.bias is not None else None
        weight, count = self.weight[rows], conv_input.shape[0]
        if conv_input.is_contiguous():
            side_by_side = conv_input.reshape((1, -1) + tuple(conv_input.shape[2:]))
            output = F.conv2d(side_by_side, weight, bias, conv.stride, conv.padding, conv.dilation, groups=count)
            selected = output[0]
        else:
            output = F.conv2d(conv_input, weight, bias, conv.stride, conv.padding, conv.dilation)
            own = torch.arange(count, device=output.device)
            selected = output[own, own]
        if self.scale is None or self.shift is None:
            return selected
        return selected * self.scale[rows, None, None] + self.shift[rows, None, None]


def _dense_filters(conv: nn.Conv2d, chosen: Tensor) -> Tensor:
    """The chosen filters as filters over all of the conv's input channels ``(F, C_in, k, k)``."""
    weight = conv.weight[chosen]
    if conv.groups == 1:
        return weight
    per_group_out, per_group_in = conv.out_channels // conv.groups, conv.in_channels // conv.groups
    dense = weight.new_zeros((len(chosen), conv.in_channels) + tuple(weight.shape[2:]))
    # Indices built on the device: no host read of ``chosen``.
    first = (chosen // per_group_out) * per_group_in
    inputs = first[:, None] + torch.arange(per_group_in, device=chosen.device)
    rows = torch.arange(len(chosen), device=chosen.device)[:, None]
    dense[rows, inputs] = weight
    return dense


def _normalization_affine(
    target: nn.Module, conv: nn.Module, chosen: Tensor
) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """The chosen channels' scale and shift of an eval-mode batch norm ``target``: ``y = scale * x
    + shift``. ``(None, None)`` where the conv is its own target."""
    if target is conv:
        return None, None
    assert isinstance(target, nn.modules.batchnorm._BatchNorm) and target.running_var is not None
    assert target.running_mean is not None
    scale = torch.rsqrt(target.running_var[chosen] + target.eps)
    if target.weight is not None:
        scale = scale * target.weight[chosen]
    shift = -target.running_mean[chosen] * scale
    if target.bias is not None:
        shift = shift + target.bias[chosen]
    return scale, shift


def _is_affine_tail(conv: nn.Module, target: nn.Module) -> bool:
    """Whether ``target(conv(x))`` is affine in ``x`` by the modules' types: ``conv`` a plain
    ``nn.Conv2d`` (not a subclass: a quantization-aware conv fake-quantizes, a parametrized one
    computes its weight), ``target`` the conv itself or a batch norm normalizing with its running
    statistics (eval mode), and no hooks on either that could change what they compute."""
    if type(conv) is not nn.Conv2d or _has_hooks(conv) or conv.padding_mode != "zeros":
        return False
    if target is conv:
        return True
    return (
        type(target) in (nn.BatchNorm2d, nn.SyncBatchNorm)
        and not _has_hooks(target)
        and not target.training
        and getattr(target, "running_mean", None) is not None
        and getattr(target, "running_var", None) is not None
    )


def _has_hooks(module: nn.Module) -> bool:
    hook_tables = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return any(getattr(module, table, None) for table in hook_tables)


def _chunk_size(count: int, height: int, width: int, device: torch.device) -> int:
    """Images per chunk of the model's part: the whole batch on an accelerator (one large
    batch keeps it busy), about ``CPU_CHUNK_PIXELS`` pixels' worth on the CPU."""
    if device.type != "cpu":
        return count
    return max(1, min(count, CPU_CHUNK_PIXELS // (height * width)))


class _ImageParameterization:
    """Display images ``(F, C, H, W)`` in [0, 1] from a learnable, ``1 / f``-scaled spectrum.

    Attributes:
        spectrum: the learnable coefficients ``(F, C, H, W // 2 + 1, 2)`` (real and imaginary).
    """

    def __init__(
        self,
        count: int,
        channels: int,
        height: int,
        width: int,
        colour: Optional[Tensor],
        generator: torch.Generator,
        device: torch.device,
    ) -> None:
        self.size = (height, width)
        self.colour = colour
        self.scale = _frequency_scale(height, width).to(device)
        noise = torch.randn(count, channels, height, width // 2 + 1, 2, generator=generator) * INIT_STD
        self.spectrum = noise.to(device).requires_grad_(True)

    def __call__(self) -> Tensor:
        coefficients = torch.view_as_complex(self.spectrum) * self.scale
        # "ortho": the pixel values' scale does not depend on the image's size.
        decorrelated = torch.fft.irfft2(coefficients, s=self.size, norm="ortho")
        if self.colour is not None:
            # One (3 x 3) @ (3 x pixels) product per image: a third of an einsum's time here.
            decorrelated = torch.matmul(self.colour, decorrelated.flatten(2)).view_as(decorrelated)
        return torch.sigmoid(decorrelated)


def _frequency_scale(height: int, width: int) -> Tensor:
    """``1 / |frequency|`` for each coefficient of an ``rfft2`` of a ``height x width`` image,
    ``(H, W // 2 + 1)``, with the frequency floored at one cycle per image so that the mean
    (frequency 0) gets a finite, largest weight; then normalized by its mean squared value so
    that a step of the optimizer moves a pixel by about the same amount at any size."""
    rows = torch.fft.fftfreq(height).view(-1, 1)
    columns = torch.fft.rfftfreq(width).view(1, -1)
    frequency = torch.sqrt(rows**2 + columns**2).clamp(min=1.0 / max(height, width))
    scale = 1.0 / frequency
    return scale / scale.pow(2).mean().sqrt()


def _input_range(probe: Tensor) -> tuple[Tensor, Tensor]:
    """Per input channel, ``low`` and ``high - low`` as ``(1, C, 1, 1)`` float32: a display value
    ``v`` in [0, 1] reaches the model as ``low + (high - low) * v``.

    ``low``/``high`` are the 0.5th and 99.5th percentiles of the channel over the probe, not its
    minimum and maximum: a few outlying pixels (a sensor's hot pixel, a padded border) would
    otherwise widen the range so that the images are drawn in values the data rarely has.
    Non-finite values are left out. A constant channel (a grey image, a constant extra input)
    gets ``low - 0.5 .. low + 0.5``: some room to vary around the one value the model ever saw,
    on the scale of a unit-variance normalized input, rather than a zero-width range that would
    give the image no gradient in that channel.
    """
    values = probe.detach().float().transpose(0, 1).reshape(probe.shape[1], -1)
    lows, highs = [], []
    for channel in values:
        finite = channel[torch.isfinite(channel)]
        if finite.numel() == 0:
            finite = torch.zeros(1, device=channel.device)
        if finite.numel() > _QUANTILE_LIMIT:
            finite = finite[:: -(-finite.numel() // _QUANTILE_LIMIT)]
        quantiles = torch.quantile(finite, torch.tensor(RANGE_PERCENTILES, device=finite.device))
        lows.append(quantiles[0])
        highs.append(quantiles[1])
    low, high = torch.stack(lows), torch.stack(highs)
    constant = high <= low
    low = torch.where(constant, low - 0.5, low)
    high = torch.where(constant, low + 1.0, high)
    return low.view(1, -1, 1, 1), (high - low).view(1, -1, 1, 1)


def _colour_mixing(probe: Tensor, low: Tensor, span: Tensor) -> Tensor:
    """The square root of the probe's 3 x 3 colour covariance in display space ([0, 1]),
    scaled so that its largest column has norm 1: a unit step in any decorrelated channel
    changes the display colours by at most about one unit."""
    display = ((probe.detach().float() - low) / span).clamp(0.0, 1.0)
    pixels = display.transpose(0, 1).reshape(3, -1)
    pixels = pixels[:, torch.isfinite(pixels).all(dim=0)]
    if pixels.shape[1] < 2:
        return torch.eye(3, device=probe.device)
    covariance = torch.cov(pixels.double()).cpu()  # 3 x 3: decomposed on the host, whatever the device
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    root = eigenvectors @ torch.diag(eigenvalues.clamp(min=COVARIANCE_EPS).sqrt()) @ eigenvectors.T
    root = root / root.norm(dim=0).max()
    return root.float().to(probe.device)


def _random_motions(steps: int, count: int, height: int, width: int, generator: torch.Generator) -> Tensor:
    """Every step's affine transforms, ``(steps, F, 2, 3)`` for ``F.affine_grid``: drawn at once
    on the CPU from the private generator (one copy to the device, none per step).

    Each image gets its own translation (up to ``JITTER_AT_224`` pixels at 224, scaled with the
    size), scale and rotation about the centre, expressed in ``affine_grid``'s normalized
    coordinates, where x spans the width and y the height (hence the aspect-ratio factors that
    keep a rotation a rotation on a non-square image)."""
    shape = (steps, count)
    jitter = max(1.0, JITTER_AT_224 * max(height, width) / 224.0)
    shift_x = (torch.rand(shape, generator=generator) * 2 - 1) * jitter * 2.0 / width
    shift_y = (torch.rand(shape, generator=generator) * 2 - 1) * jitter * 2.0 / height
    low, high = SCALE_RANGE
    scale = low + (high - low) * torch.rand(shape, generator=generator)
    angle = (torch.rand(shape, generator=generator) * 2 - 1) * math.radians(ROTATION_DEGREES)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale  # the grid samples the input: 1 / scale
    aspect = height / width
    first = torch.stack([cos, -sin * aspect, shift_x], dim=-1)
    second = torch.stack([sin / aspect, cos, shift_y], dim=-1)
    return torch.stack([first, second], dim=-2)


def _transformed(images: Tensor, motion: Tensor) -> Tensor:
    """``images`` moved by their own affine transforms, one ``grid_sample`` for the batch.
    Reflection padding stands in for padding the image first: the border the motion uncovers
    repeats the image's own content, so no flat band appears that a filter could respond to."""
    grid = _sampling_grid(motion, images.shape[-2], images.shape[-1], images.device)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _sampling_grid(motion: Tensor, height: int, width: int, device: torch.device) -> Tensor:
    """``F.affine_grid(motion, (F, C, height, width), align_corners=False)``, computed as the
    two affine maps of the pixel centres' coordinates, broadcast: about a tenth of
    ``affine_grid``'s batched matrix product on the CPU for 64 images of 128 pixels."""
    columns = (torch.arange(width, device=device, dtype=motion.dtype) * 2 + 1) / width - 1
    rows = (torch.arange(height, device=device, dtype=motion.dtype) * 2 + 1) / height - 1
    weight_x, weight_y, offset = (motion[..., index].unsqueeze(-1).unsqueeze(-1) for index in range(3))
    grid = weight_x * columns.view(1, 1, 1, width) + weight_y * rows.view(1, 1, height, 1) + offset
    return grid.permute(0, 2, 3, 1)


def _forward_dtype(model: nn.Module, target: nn.Module, probe: Tensor) -> torch.dtype:
    """The dtype the model computes in: that of the target's first floating parameter (a
    bf16-true model takes bf16 input), else the model's, else the probe's. Only the forward
    runs in it; the optimization stays in float32."""
    for module in (target, model):
        for parameter in module.parameters():
            if parameter.is_floating_point():
                return parameter.dtype
    return probe.dtype


def _as_display_array(images: Tensor) -> np.ndarray:
    """``(F, C, H, W)`` in [0, 1] to ``uint8`` ``(F, H, W, 3 or 1)`` on the host."""
    if images.shape[1] != 3:
        images = images[:, :1]
    # A model that overflowed to NaN leaves a grey image rather than undefined bytes.
    images = torch.nan_to_num(images.detach().float(), nan=0.5)
    pixels = (images * 255).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def _without_autocast(device: torch.device) -> ContextManager[Any]:
    """Autocast off for ``device`` (a caller's mixed precision would run the forward in bf16/fp16
    and lose the small gradients of a nearly grey start); nothing where autocast is unknown."""
    available = getattr(torch.amp, "is_autocast_available", None)  # torch >= 2.4
    if device.type in ("cpu", "cuda") or (available is not None and available(device.type)):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _call_model(model: nn.Module, inputs: Tensor) -> Any:
    return model(inputs)


def _check_arguments(probe: Tensor, steps: int, seed: int) -> None:
    if not isinstance(probe, Tensor) or not probe.is_floating_point():
        kind = f"a {probe.dtype} tensor" if isinstance(probe, Tensor) else type(probe).__name__
        raise TypeError(f"`probe` must be a floating-point tensor (N, C, H, W) as the model sees it, got {kind}.")
    if probe.dim() != 4 or probe.numel() == 0:
        raise ValueError(
            f"`probe` must be a non-empty 4-d batch (N, C, H, W), got shape {tuple(probe.shape)}: "
            "pass a batch of images as the model takes them."
        )
    if not _is_int(steps):
        raise TypeError(f"`steps` must be an int >= 1, got {steps!r}.")
    if steps < 1:
        raise ValueError(f"`steps` must be >= 1 (the number of optimization steps), got {steps}.")
    if not _is_int(seed):
        raise TypeError(f"`seed` must be an int, got {seed!r}.")


def _checked_channels(channels: Sequence[int]) -> list[int]:
    values = list(channels)
    if not values:
        raise ValueError("`channels` is empty: pass the output channels of the target to visualize, e.g. range(16).")
    wrong = [value for value in values if not _is_int(value)]
    if wrong:
        raise TypeError(f"`channels` must hold ints (output-channel indices), got {wrong[0]!r}.")
    return [int(value) for value in values]


def _check_channel_range(channels: list[int], available: Optional[int], target: nn.Module, model: nn.Module) -> None:
    if available is None:
        return
    outside = [channel for channel in channels if not 0 <= channel < available]
    if outside:
        raise ValueError(
            f"`channels` {outside} out of range: the target module {_module_label(target, model)} has "
            f"{available} output channels; pass indices in [0, {available})."
        )


def _declared_channels(target: nn.Module) -> Optional[int]:
    """The target's output channel count where its type declares it (conv, batch or group norm)."""
    for attribute in ("out_channels", "num_features", "num_channels"):
        value = getattr(target, attribute, None)
        if _is_int(value):
            return int(value)  # type: ignore[arg-type]
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _module_label(target: nn.Module, model: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return f"'{name}' ({type(target).__name__})" if name else f"(the model itself, {type(target).__name__})"
    return f"{type(target).__name__} (not a submodule of the model)"
