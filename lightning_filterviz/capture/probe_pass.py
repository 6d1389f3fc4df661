"""The training thread's part of a snapshot: one probe pass through one watched model.

:class:`ProbePass` owns what the engine learns about a model between snapshots: which conv
layers are watched, how each conv's activation is observed (the plan, learned by the first
probe pass), the training batches' per-channel maxima since the last snapshot, and the
receptive fields measured for the peak patches and the dataset examples. Its
:meth:`ProbePass.capture` reads the probe input out of a batch, runs the probe pass
(capture.py) and adds the probe images and receptive fields to what is shipped to host memory.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, ContextManager, Optional

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.nn.parameter import is_lazy
from torch.nn.utils import parametrize

from lightning_filterviz.capture.activations import ActivationTap, ProbePlan
from lightning_filterviz.capture.probe_capture import CapturedProbe, SnapshotDraft, start_capture
from lightning_filterviz.capture.conv_layers import ConvLayer, scripted_conv_layers, select_conv_layers
from lightning_filterviz.capture.gradients import gradient_magnitudes
from lightning_filterviz.core.layer_names import resolve_layer_patterns, unmatched_patterns
from lightning_filterviz.capture.probe import finite_on_host, model_input, pin_memory, to_device
from lightning_filterviz.capture.receptive_fields import receptive_field
from lightning_filterviz.core.records import ReceptiveField
from lightning_filterviz.core.settings import VisualizerSettings
from lightning_filterviz.core.tiles import drawn_channels_text

__all__ = ["ProbePass"]


class ProbePass:
    """Snapshots of one model, on the training thread.

    Args:
        model: the network; only a weak reference is kept (a freed model's address can be
            given to the next one, so ``id()`` would not do).
        settings: the engine's settings.

    Raises:
        ValueError: if a name or pattern in ``layers`` matches no conv layer.
    """

    def __init__(self, model: nn.Module, settings: VisualizerSettings) -> None:
        self.settings = settings
        self.layers: list[ConvLayer] = select_conv_layers(model, settings.layers)
        _warn_about_scripted_convs(model)
        self._model = weakref.ref(model)
        # How each conv's activation is observed, learned by the first probe pass of this model.
        self.plan: Optional[ProbePlan] = None
        self.training_maxima: dict[str, Tensor] = {}
        # Per conv, its filters' gradient magnitudes read for the next snapshot (see read_gradients).
        self.gradient_magnitudes: dict[str, Tensor] = {}
        self.response_layers: list[str] = []
        self.examples_layers: list[str] = []
        self.filmstrip_layers: list[str] = []
        self.featvis_layers: list[str] = []
        self.receptive_fields: dict[str, Optional[ReceptiveField]] = {}
        self._pinned_probe: Optional[tuple[Any, Any]] = None
        # Whether the last probe held on the host was all finite, told like the pinned one.
        self._finite_probe: Optional[tuple[Any, bool]] = None
        self._described_channels: Optional[int] = None

    def watches(self, model: nn.Module) -> bool:
        """Whether this pass is for ``model`` (the very object, still alive)."""
        return self._model() is model

    def read_gradients(self) -> None:
        """Keep each watched conv's gradient magnitudes per filter, as they are now, for the
        next snapshot to ship (a later read replaces them): a reduction per conv on the
        gradients' device, nothing read on the host."""
        self.gradient_magnitudes = gradient_magnitudes(self.layers)

    def resolve_layer_arguments(self) -> list[str]:
        """Resolve ``response_layers``, ``examples_layers`` and ``featvis_layers`` among the
        watched layers, and return the layers to draw filmstrips of.

        Raises:
            ValueError: if a name or pattern in ``filmstrip_layers``, ``response_layers``,
                ``examples_layers`` or ``featvis_layers`` matches none of the watched layers.
        """
        names = [conv.name for conv in self.layers]
        for argument in ("filmstrip_layers", "response_layers", "examples_layers", "featvis_layers"):
            unmatched = unmatched_patterns(getattr(self.settings, argument), names)
            if unmatched:
                raise ValueError(
                    f"`{argument}` entry {unmatched[0]!r} matches none of the watched conv layers "
                    f"{names[:5]}{' ...' if len(names) > 5 else ''}; "
                    "use their names or fnmatch patterns, or [] for none."
                )
        filmstrips = resolve_layer_patterns(self.settings.filmstrip_layers, names) if self.settings.log_weights else []
        self.filmstrip_layers = filmstrips  # each snapshot carries them to the run state
        self.response_layers = resolve_layer_patterns(self.settings.response_layers, names)
        self.examples_layers = resolve_layer_patterns(self.settings.examples_layers, names)
        self.featvis_layers = resolve_layer_patterns(self.settings.featvis_layers, names)
        return filmstrips

    def featvis_targets(self) -> dict[str, tuple[nn.Conv2d, nn.Module]]:
        """Per conv of ``featvis_layers``, the conv and the module whose output is its filters'
        response to raise: the module whose output is the input of its activation (the conv,
        or the normalization after it: before the ReLU, so that a silent filter still gets a
        gradient), else the conv itself (no activation, or one only the tracer follows)."""
        taps = self.plan.taps if self.plan is not None else {}
        targets = {}
        for layer in self.layers:
            if layer.name in self.featvis_layers:
                tap = taps.get(layer.name)
                targets[layer.name] = (layer.module, tap.module if tap is not None else layer.module)
        return targets

    def model_inputs(self, model: nn.Module, batch: Any, convert_input: Optional[Callable[[Tensor], Tensor]]) -> Any:
        """``batch``'s model input on ``model``'s device, in its convs' dtype, as a probe pass feeds it."""
        return self._probe_inputs(model, batch, convert_input)

    def capture(
        self,
        model: nn.Module,
        batch: Any,
        step: int,
        *,
        forward_context: Optional[Callable[[], ContextManager[Any]]],
        convert_input: Optional[Callable[[Tensor], Tensor]],
        draw_views: bool,
        probe_images: bool,
        probe_finite: Optional[bool] = None,
    ) -> CapturedProbe:
        """Run the probe pass on ``batch``'s model input, ready to :meth:`~CapturedProbe.ship`.

        With ``probe_images``, the probe's images (if it holds any) are shipped too; with
        ``draw_views``, the receptive fields of the response layers and the probe they are
        drawn on. ``probe_finite`` says whether the model input is known to hold no NaN or
        Inf (``None``: checked here where it is in host memory).

        Raises:
            ValueError: if the batch has no model input where ``batch_key`` says, or a
                watched conv has no weights yet (a lazy module before its first forward).
        """
        lazy = [layer.name for layer in self.layers if is_lazy(_stored_weight(layer.module))]
        if lazy:
            raise ValueError(
                f"The conv layers {lazy[:3]} have no weights yet (lazy modules): run one forward pass "
                "before the first snapshot, so that their shapes are known."
            )
        if probe_finite is None:
            probe_finite = self._known_finite(model_input(batch, self.settings.batch_key))
        inputs = self._probe_inputs(model, batch, convert_input)
        captured = self._start_capture(model, inputs, step, forward_context, draw_views, probe_finite)
        captured.draft.draw_views = draw_views
        captured.draft.filmstrip_layers = tuple(self.filmstrip_layers)
        images = _first_images(inputs)
        if images is not None:
            self._say_how_channels_are_drawn(images)
        if probe_images and images is not None:
            captured.add("probe_images", images[: self.settings.max_images])
            # Checked once per run, with the images: per probe image, its NaN and Inf values,
            # counted on the device and read on the host with the rest (see RunState.judge).
            captured.add("probe_non_finite", torch.isfinite(images).logical_not().sum(dim=(1, 2, 3)))
        # Measured at the pass's first capture whether or not it draws the views, so that the
        # dataset examples have them from the first validation run after it.
        if draw_views or not self.receptive_fields:
            self._attach_receptive_fields(captured, model, inputs)
        return captured

    def example_layers(self) -> dict[str, tuple[ActivationTap, ReceptiveField]]:
        """The ``examples_layers`` whose activation one module's output shows and whose
        receptive field was measured (none before the first probe pass)."""
        if self.plan is None:
            return {}
        layers = {}
        for name in self.examples_layers:
            tap, field = self.plan.taps.get(name), self.receptive_fields.get(name)
            if tap is not None and field is not None:
                layers[name] = (tap, field)
        return layers

    def _say_how_channels_are_drawn(self, images: Tensor) -> None:
        """Once per channel count: how images of neither 1 nor 3 channels are drawn."""
        channels = images.shape[1]
        if channels in (1, 3) or channels == self._described_channels:
            return
        self._described_channels = channels
        rank_zero_info(f"filterviz: the probe images have {channels} channels; {drawn_channels_text(channels)}.")

    def _probe_inputs(self, model: nn.Module, batch: Any, convert_input: Optional[Callable[[Tensor], Tensor]]) -> Any:
        inputs = model_input(batch, self.settings.batch_key)
        device = _device_of(model)
        if device.type == "cuda" and _holds_cpu_tensors(inputs):
            # Pinned once per probe, so that each snapshot's copy to the GPU is asynchronous. The
            # probe is told by its tensors and their versions (written in place, it is pinned
            # again), not by the container around them, which a ``batch_key`` function may build
            # anew at each call.
            key = [(tensor, tensor._version) for tensor in _tensors_in(inputs)]
            cached = self._pinned_probe
            if cached is None or not _same_probe(cached[0], key):
                self._pinned_probe = cached = (key, pin_memory(inputs))
            inputs = cached[1]
        inputs = to_device(inputs, device, convert_input)
        # Follow the convs' dtype (a model cast to float64, say) where the conversion did not.
        dtype = _stored_weight(self.layers[0].module).dtype if self.layers else None
        if dtype is not None and dtype.is_floating_point:
            inputs = apply_to_collection(inputs, Tensor, lambda tensor: _as_floating(tensor, dtype))
        return inputs

    def _known_finite(self, inputs: Any) -> bool:
        """Whether every value of ``inputs`` is known to be finite: checked on the host once
        per probe (told by its tensors and their versions) where all of it is in host memory.
        A probe already on the GPU is not checked (reading the answer would wait for the
        device): its statistics then leave non-finite positions out, at about a dozen kernels
        per layer instead of two."""
        key = [(tensor, tensor._version) for tensor in _tensors_in(inputs)]
        cached = self._finite_probe
        if cached is None or not _same_probe(cached[0], key):
            self._finite_probe = cached = (key, bool(finite_on_host(inputs)))
        return cached[1]

    def _start_capture(
        self,
        model: nn.Module,
        inputs: Any,
        step: int,
        forward_context: Optional[Callable[[], ContextManager[Any]]],
        draw_views: bool,
        probe_finite: bool,
    ) -> CapturedProbe:
        maxima, self.training_maxima = self.training_maxima, {}
        magnitudes, self.gradient_magnitudes = self.gradient_magnitudes, {}
        captured = start_capture(
            model,
            inputs,
            self.layers,
            step,
            forward_fn=self.settings.forward_fn,
            max_filters=self.settings.max_filters,
            max_images=self.settings.max_images,
            capture_activations=self.settings.log_activations,
            forward_context=forward_context,
            peak_layers=self.response_layers if draw_views else (),
            training_maxima=maxima,
            gradient_magnitudes=magnitudes,
            plan=self.plan,
            finite_input=probe_finite,
        )
        if self.settings.log_activations:
            if captured.plan is not None and captured.plan is not self.plan:
                _note_how_layers_are_watched(captured.draft, captured.plan, model)
            self.plan = captured.plan
        return captured

    def _attach_receptive_fields(self, captured: CapturedProbe, model: nn.Module, inputs: Any) -> None:
        draft = captured.draft
        wanted_names = {*self.response_layers, *self.examples_layers}
        wanted = [layer for layer in self.layers if layer.name in wanted_names]
        if not wanted or not _looks_like_images(inputs):
            return
        for layer in wanted:
            if layer.name not in self.receptive_fields:
                # Measured once: the field is a property of the architecture, not of the step.
                try:
                    field = receptive_field(model, inputs, layer.module, forward_fn=self.settings.forward_fn)
                except Exception as error:  # an optional view must not take the rest down with it
                    field = None
                    rank_zero_warn(f"filterviz: no peak patches for `{layer.name}`: {type(error).__name__}: {error}")
                self.receptive_fields[layer.name] = field
            field = self.receptive_fields[layer.name]
            drawn = layer.name in self.response_layers
            if drawn and field is not None and draft.layers[layer.name].output_hw is not None:
                draft.receptive_fields[layer.name] = field
        if draft.receptive_fields:
            captured.add("probe_inputs", inputs)


def _note_how_layers_are_watched(draft: SnapshotDraft, plan: ProbePlan, model: nn.Module) -> None:
    """For the layer table: where training batches are watched for each conv with a ReLU-family activation."""
    names = {module: name for name, module in model.named_modules()}
    for layer, capture in list(draft.layers.items()):
        if not capture.zeroing:
            continue
        tap = plan.taps.get(layer)
        watched_by = f"hook on `{names.get(tap.module, type(tap.module).__name__)}`" if tap else "tracer"
        draft.update_layer(layer, watched_by=watched_by)


def _warn_about_scripted_convs(model: nn.Module) -> None:
    scripted = scripted_conv_layers(model)
    if scripted:
        rank_zero_warn(
            f"filterviz: skipping {len(scripted)} conv layer(s) inside TorchScript modules (torch.jit.script or "
            f"torch.jit.trace): {scripted[:5]}{' ...' if len(scripted) > 5 else ''}. A scripted module takes no "
            "Python hooks, so they are not watched; watch the model before scripting it to see them."
        )


def _first_images(inputs: Any) -> Optional[Tensor]:
    """The model input if it is a batch of images, else the first batch of images among several
    inputs (see :func:`_looks_like_images`)."""
    if _looks_like_images(inputs):
        return inputs
    candidates = inputs.values() if isinstance(inputs, dict) else inputs if isinstance(inputs, (list, tuple)) else ()
    return next((candidate for candidate in candidates if _looks_like_images(candidate)), None)


def _looks_like_images(inputs: Any) -> bool:
    """Whether ``inputs`` is a batch of images ``(N, C, H, W)``: any number of channels (an
    image with its mask, RGBA, multispectral bands; see
    :func:`~lightning_filterviz.core.tiles.drawn_channels` for how they are drawn), but no
    more channels than pixels along each side beyond 1 and 3, so that a batch laid out
    ``(N, H, W, C)`` is not read as ``H`` channels."""
    if not isinstance(inputs, Tensor) or inputs.dim() != 4:
        return False
    channels, height, width = inputs.shape[1:]
    return channels in (1, 3) or 1 <= channels <= min(height, width)


def _stored_weight(module: nn.Module) -> Tensor:
    """The conv's weight as stored, without computing a parametrized one (which, in train
    mode, can run a power iteration or draw random numbers)."""
    if parametrize.is_parametrized(module, "weight"):
        stored = module.parametrizations["weight"]  # type: ignore[index]
        # One stored tensor, or several (weight norm keeps ``original0`` and ``original1``).
        return getattr(stored, "original") if hasattr(stored, "original") else getattr(stored, "original0")
    return module.weight  # type: ignore[return-value]


def _same_probe(old: list[tuple[Tensor, int]], new: list[tuple[Tensor, int]]) -> bool:
    return len(old) == len(new) and all(a is b and u == v for (a, u), (b, v) in zip(old, new))


def _tensors_in(inputs: Any) -> list[Tensor]:
    found: list[Tensor] = []
    apply_to_collection(inputs, Tensor, found.append)
    return found


def _holds_cpu_tensors(inputs: Any) -> bool:
    found: list[bool] = []
    apply_to_collection(inputs, Tensor, lambda tensor: found.append(tensor.device.type == "cpu"))
    return any(found)


def _as_floating(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    return tensor.to(dtype) if tensor.is_floating_point() and tensor.dtype != dtype else tensor


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
