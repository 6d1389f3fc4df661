"""A conv's activation during one forward: its reductions, and how a later forward finds it.

:class:`ActivationRecorder` turns activations into what a snapshot keeps (per-channel
statistics, capped maps, peak positions), on the activation's device. :class:`ProbePlan`
is what the first probe pass learned about the model (see
:class:`~lightning_filterviz.capture.discovery.ActivationTracer`): for each conv, whether a plain
hook on one module (an :class:`ActivationTap`) sees its activation's input, whether only
the tracer can follow it, or why it has no activation. Later passes follow the plan, so
they pay the tracer's per-op cost only for the convs that need it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor, nn

from lightning_filterviz.core.records import FEATURE_POSITIONS, PRE_ACTIVATION

__all__ = ["ActivationRecord", "ActivationRecorder", "ActivationTap", "ProbePlan", "feature_sample"]


@dataclass
class ActivationRecord:
    """What a conv's activation looked like during one forward.

    Attributes:
        function: name of the activation function (``"relu"``, ``"silu"``, ...).
        zeroing: whether the activation floors at zero (ReLU family), so that "dead" applies.
        channel_max: per-channel maximum over the batch and all positions, in the
            activation's dtype (a maximum is exact in any dtype; it arrives on the host in
            float32); ``None`` for a snapshot's pre-activation (no floor, so no "dead";
            nothing draws it).
        channel_mean_abs: per-channel mean of absolute values, float32, averaged over the
            conv's calls with equal weight when it runs several times per forward.
        maps: the first ``max_images`` x ``max_channels`` feature maps, float32, detached.
        peak_index: per channel, the flat index into ``(N, H, W)`` of its maximum.
        output_hw: the activation's spatial size ``(H, W)``.
        calls: how many times the conv's activation ran in the forward.
        features: the first call's values at the probe's fixed feature positions,
            ``(positions, C)`` in the activation's dtype (see :func:`feature_sample`).
    """

    function: str
    zeroing: bool
    channel_max: Optional[Tensor]
    channel_mean_abs: Tensor
    maps: Tensor
    peak_index: Optional[Tensor] = None
    output_hw: Optional[tuple[int, int]] = None
    calls: int = 1
    features: Optional[Tensor] = None


class ActivationRecorder:
    """Reduces each activation as soon as it is computed, so that no activation is kept.

    Args:
        reduce_maps: turns an activation ``(N, C, H, W)`` into the small maps to keep;
            ``None`` keeps only the per-channel maxima (training-batch tracking).
        peak_layers: layers for which each channel's strongest position is recorded.
        finite_input: whether the forward's input is known to hold no NaN or Inf. Then the
            statistics are plain reductions, two kernels per layer instead of about a dozen
            that leave non-finite positions out; a non-finite activation can then only come
            from the model itself (an overflow, NaN weights), and makes its channel's
            statistics NaN or Inf (a NaN channel is not judged), as any plain reduction would.
    """

    def __init__(
        self,
        reduce_maps: Optional[Callable[[Tensor], Tensor]] = None,
        peak_layers: Iterable[str] = (),
        finite_input: bool = False,
    ) -> None:
        self._reduce_maps = reduce_maps
        self._peak_layers = frozenset(peak_layers)
        self._finite_input = finite_input
        self.records: dict[str, ActivationRecord] = {}

    def record(self, layer: str, function: str, zeroing: bool, activation: Tensor, nonnegative: bool = False) -> None:
        """Fold one call's activation of ``layer`` in.

        Args:
            layer: the conv's name.
            function: the activation function's name.
            zeroing: whether it is of the ReLU family.
            activation: its output.
            nonnegative: whether every value is known to be ``>= 0`` (so ``|h|`` is ``h``).
        """
        values = activation.detach() if activation.requires_grad else activation
        dims = [dim for dim in range(values.dim()) if dim != 1]
        channel_max: Optional[Tensor]
        finite: Optional[Tensor] = None
        if self._reduce_maps is None:  # training-batch tracking needs the maxima only
            channel_max = channel_mean_abs = values.amax(dim=dims)
        elif self._finite_input:
            channel_max, channel_mean_abs = _plain_channel_statistics(values, dims, function, nonnegative)
        else:
            finite = torch.isfinite(values)
            channel_max, channel_mean_abs = _channel_statistics(values, finite, dims, function, nonnegative)
        previous = self.records.get(layer)
        if previous is not None:
            # A conv called several times per forward (weight sharing): every call weighs the same.
            previous.calls += 1
            if previous.channel_max is not None and channel_max is not None:
                # fmax: a call with no finite value in a channel (NaN there) leaves the other's maximum.
                previous.channel_max = torch.fmax(previous.channel_max, channel_max)
            # Tracking reads the maxima only (and its calls' dtypes may differ under autocast).
            if self._reduce_maps is not None:
                weight = 1.0 / previous.calls
                previous.channel_mean_abs = torch.lerp(previous.channel_mean_abs, channel_mean_abs, weight)
            return
        maps = self._reduce_maps(values) if self._reduce_maps is not None else _NO_MAPS
        record = ActivationRecord(function, zeroing, channel_max, channel_mean_abs, maps)
        if self._reduce_maps is not None and values.dim() == 4:
            record.features = feature_sample(values)
            if layer in self._peak_layers:
                record.peak_index = _peak_indices(values, finite)
                record.output_hw = (values.shape[2], values.shape[3])
        self.records[layer] = record


def feature_sample(values: Tensor) -> Tensor:
    """``values`` ``(N, C, H, W)`` at up to :data:`~lightning_filterviz.core.records.FEATURE_POSITIONS`
    positions ``(image, row, column)`` evenly spaced over the batch, as ``(positions, C)``:
    one gather on the values' device. The same probe gives the same positions at every
    snapshot, so that features of two snapshots compare position by position."""
    images, rows, columns = _feature_positions(values.shape[0], values.shape[2], values.shape[3], values.device)
    return values[images, :, rows, columns]


@functools.lru_cache(maxsize=64)
def _feature_positions(count: int, height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    # Made once per shape and device, on the device itself (a copy from host memory would make
    # the training thread wait for the GPU): a snapshot pays the gather alone.
    total = count * height * width
    kept = min(total, FEATURE_POSITIONS)
    flat = torch.arange(kept, device=device) * (total - 1) // max(kept - 1, 1)
    images, within = flat // (height * width), flat % (height * width)
    return images, within // width, within % width


def _plain_channel_statistics(
    values: Tensor, dims: list[int], function: str, nonnegative: bool
) -> tuple[Optional[Tensor], Tensor]:
    """:func:`_channel_statistics` where every input position is finite: the same values, bitwise."""
    magnitudes = values if nonnegative else values.abs()
    channel_mean_abs = magnitudes.mean(dim=dims, dtype=torch.float32)
    return (None if function == PRE_ACTIVATION else values.amax(dim=dims)), channel_mean_abs


def _channel_statistics(
    values: Tensor, finite: Tensor, dims: list[int], function: str, nonnegative: bool
) -> tuple[Optional[Tensor], Tensor]:
    """Per channel, the maximum (in the activation's dtype: exact in any, and converted on
    arrival, not by a kernel here) and the mean of ``|h|`` (in float32 whatever the autocast
    dtype), both over the positions where ``finite`` holds. A pre-activation gets no maximum:
    without a floor it decides no "dead", and nothing draws it (a kernel fewer per layer and
    snapshot).

    A NaN or Inf position (a non-finite probe pixel, an overflow) is left out of both, so that
    it neither hides a dead filter nor swamps a layer's mean; a channel without a single
    finite position gets NaN for both (not judged). Everything stays on the device: no value
    is read on the host. Where every position is finite, the results are bitwise those of a
    plain ``amax`` and ``mean``.
    """
    # Where every value is >= 0, |h| is h: no temporary for it.
    magnitudes = values if nonnegative else values.abs()
    kept = torch.where(finite, magnitudes, 0)
    finite_count = finite.sum(dim=dims)
    positions = values.numel() // max(1, values.shape[1])
    # The mean over all positions with the non-finite ones at 0, scaled to the finite ones:
    # the scale is exactly 1.0 when all are finite, so the mean is the plain one to the bit.
    # Accumulated in float32 by the reduction itself, not by a float32 copy of a
    # half-precision activation first.
    channel_mean_abs = kept.mean(dim=dims, dtype=torch.float32) * (positions / finite_count)
    if function == PRE_ACTIVATION:
        return None, channel_mean_abs
    # An activation known to be >= 0 has its maximum among the kept values (a 0 put in for
    # a non-finite one never exceeds it); any other needs the non-finite ones at -inf.
    ranked = kept if nonnegative else torch.where(finite, values, float("-inf"))
    channel_max = ranked.amax(dim=dims)
    return torch.where(finite_count > 0, channel_max, float("nan")), channel_mean_abs


def _peak_indices(values: Tensor, finite: Optional[Tensor]) -> Tensor:
    """Per channel, the flat index into ``(N, H, W)`` of its largest value; with ``finite``,
    of its largest finite value: a NaN or Inf position is never a peak (it is, only where a
    channel has no finite value at all)."""
    ranked = values if finite is None else torch.where(finite, values, float("-inf"))
    return ranked.transpose(0, 1).reshape(values.shape[1], -1).argmax(dim=1)


# Training-batch tracking keeps no maps.
_NO_MAPS = torch.empty(0)


@dataclass(frozen=True)
class ActivationTap:
    """A module whose output is exactly the input of a conv's ReLU-family activation.

    The activation is the identity between ``floor`` and ``ceiling`` and clips outside, so
    ``activation(x) == x.clamp(floor, ceiling)``; and per channel, the activation's maximum
    exceeds a threshold ``floor <= t < ceiling`` exactly where ``max(x)`` does. So a plain
    forward hook on the tap sees the activation, with no tracer.

    For a conv without an activation, the tap is the module whose output (the conv's,
    through normalization) meets the residual sum or concatenation: ``function`` is
    :data:`~lightning_filterviz.core.records.PRE_ACTIVATION` and the bounds are infinite.

    Attributes:
        module: the conv itself, the normalization, pooling, upsampling or padding module
            after it (whose output positions are then the activation's), or a fused conv
            that applies its ReLU itself (its output is the activation: a ReLU of it changes
            nothing).
        function: the activation's name (``"relu"``, ``"hardtanh"``, ...).
        floor: its lower bound (0 for ReLU).
        ceiling: its upper bound (``inf`` for ReLU, 6 for ReLU6).
    """

    module: nn.Module
    function: str
    floor: float
    ceiling: float

    @property
    def zeroing(self) -> bool:
        """Whether the tap sees a ReLU-family activation (else the conv's output before any
        activation, see :data:`~lightning_filterviz.core.records.PRE_ACTIVATION`)."""
        return self.function != PRE_ACTIVATION

    def decides(self, threshold: float) -> bool:
        """Whether "fired above ``threshold``" can be read off the tap's output."""
        return self.zeroing and self.floor <= threshold < self.ceiling

    def activation(self, tap_output: Tensor) -> Tensor:
        """The activation's output for the tap's output (the output itself where nothing is
        clipped: a pre-activation tap)."""
        if self.floor == float("-inf") and self.ceiling == float("inf"):
            return tap_output
        return tap_output.clamp(self.floor, None if self.ceiling == float("inf") else self.ceiling)


@dataclass
class ProbePlan:
    """How each watched conv's activation is observed, as the first probe pass found it.

    Attributes:
        taps: convs whose activation a hook on one module sees.
        traced: convs with an activation that only the tracer can follow (a non-ReLU
            activation, a functional normalization in between, a module shared with others).
        no_activation: convs without an activation, and why.
        through: per conv, what was followed between it and its activation besides
            normalization and dropout: elementwise arithmetic (``("mul", "add")`` for a
            FrozenBatchNorm2d), pooling, resampling and padding (``("max_pool2d",)``), or
            ``("fused ConvReLU2d",)`` for a fused conv with its own ReLU; where there was any.
        zeroing: convs with a ReLU-family activation, the ones "dead" is judged for (and so
            the only ones training batches are watched for).
    """

    taps: dict[str, ActivationTap] = field(default_factory=dict)
    traced: list[str] = field(default_factory=list)
    no_activation: dict[str, str] = field(default_factory=dict)
    through: dict[str, tuple[str, ...]] = field(default_factory=dict)
    zeroing: frozenset[str] = frozenset()
