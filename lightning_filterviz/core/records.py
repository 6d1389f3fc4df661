"""The records a snapshot becomes on its way, each made whole by one stage and frozen.

- :class:`CapturedSnapshot` (with its :class:`LayerCapture` per conv): what the training
  thread captured, made once the one copy to host memory has arrived;
- :class:`Snapshot`: that, with the run state's verdicts (dead, dormant, drift, ranges);
  it is what :meth:`~lightning_filterviz.FilterVisualizer.snapshot` returns;
- :class:`DatasetExamples` (with its :class:`LayerExamples` per conv): one validation run's
  dataset examples; :class:`RunEnding`: what the end of a run draws;
- :class:`Rendered`: what the views made of one of those at one step (images, scalars,
  tables, history files), which publishing writes.

Mappings in them are read-only and their attributes cannot be assigned, so a record handed
from the training thread to the writer thread, or to the user, never changes afterwards.
A leaf module: it imports nothing else of the package, so every stage can use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping, Optional

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

__all__ = [
    "FEATURE_POSITIONS",
    "NO_INDEX",
    "PRE_ACTIVATION",
    "CapturedSnapshot",
    "DatasetExamples",
    "FeatureVisualizations",
    "HistoryFile",
    "LayerCapture",
    "LayerExamples",
    "LayerHealth",
    "ReceptiveField",
    "Rendered",
    "RunEnding",
    "Snapshot",
    "Table",
]

# What a conv without an activation is recorded as: its output through normalization.
PRE_ACTIVATION = "pre-activation"
# The dataset index of an example whose index is not known (a shuffled loader, an iterable dataset).
NO_INDEX = -1


def read_only(mapping: Optional[Mapping[Any, Any]] = None) -> Mapping[Any, Any]:
    """A read-only copy of ``mapping`` (an empty one for ``None``)."""
    return MappingProxyType(dict(mapping or {}))


def _no_entries() -> Mapping[Any, Any]:
    return read_only()


class _Frozen:
    """Makes the mappings a record was given read-only copies, so that its maker keeps no
    handle to change them through."""

    def __post_init__(self) -> None:
        for each in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, each.name)
            if isinstance(value, dict):
                object.__setattr__(self, each.name, read_only(value))


@dataclass(frozen=True)
class LayerCapture(_Frozen):
    """One conv layer at one snapshot, as the probe pass captured it.

    Made whole, once the snapshot's copy to host memory has arrived: the tensors are CPU
    tensors (float32, ``peak_index`` int64), views into the snapshot's one host buffer or
    copies (see :mod:`lightning_filterviz.capture.transfer`), the weights laid out NCHW.

    Attributes:
        name: the conv's qualified module name.
        out_channels: number of filters in the layer.
        weight: the first ``max_filters`` filters, ``(F, C_in / groups, kH, kW)``.
        activation: name of the activation function, or ``None`` when the conv's output
            reaches no activation (a residual sum, a concatenation, the model output).
        no_activation_reason: why there is no activation, when there is none.
        pre_activation: whether, having no activation, the conv's output (through
            normalization, where the next operation is a residual sum or a concatenation) was
            captured instead: signed maps and statistics, "dead" does not apply.
        zeroing: whether the activation floors at zero (ReLU family), so "dead" applies.
        rgb: whether the filters see an RGB image (3 input channels, one group), so they
            are drawn in colour.
        channel_max: per-filter maximum of the activation over the probe, ``(out_channels,)``.
        channel_mean_abs: per-filter mean absolute activation, ``(out_channels,)``.
        maps: capped feature maps ``(images, F, H, W)``.
        peak_index: per drawn filter, the flat index into ``(N, H, W)`` of its strongest
            activation on the whole probe (int64).
        output_hw: the activation's spatial size ``(H, W)`` before any downsampling.
        training_max: per-filter maximum over the training batches watched since the
            previous snapshot (``track_training_batches``), ``(out_channels,)``.
        watched_by: how training batches are watched for this conv's dead filters (a hook
            on a named module, or the tracer); set at the snapshot that found it.
        through: what was followed between the conv and its activation besides normalization
            and dropout: elementwise arithmetic (``("mul", "add")`` for a FrozenBatchNorm2d),
            pooling, resampling or padding (``("max_pool2d",)``: the activation, its statistics
            and maps are the pooled ones), or ``("fused ConvReLU2d",)`` for a fused conv.
        features: the activation (or pre-activation) at up to
            :data:`~lightning_filterviz.core.records.FEATURE_POSITIONS` fixed positions of the
            probe, ``(positions, out_channels)``: the same positions at every snapshot, for the
            layer's health signals (see :class:`LayerHealth`).
        grad_magnitude: per filter, the mean ``|dL/dW_c|`` of the last optimizer step before
            this snapshot whose gradients were read (float32, ``(out_channels,)``), as the
            optimizer was about to apply them: unscaled, accumulated and reduced across ranks.
        frozen: whether the conv's weight does not require grad (so it gets no gradient and
            is reported frozen, not gradient-dormant).
    """

    name: str
    out_channels: int
    weight: Tensor
    activation: Optional[str] = None
    no_activation_reason: Optional[str] = None
    pre_activation: bool = False
    zeroing: bool = False
    rgb: bool = False
    channel_max: Optional[Tensor] = None
    channel_mean_abs: Optional[Tensor] = None
    maps: Optional[Tensor] = None
    peak_index: Optional[Tensor] = None
    output_hw: Optional[tuple[int, int]] = None
    training_max: Optional[Tensor] = None
    watched_by: Optional[str] = None
    through: tuple[str, ...] = ()
    features: Optional[Tensor] = None
    grad_magnitude: Optional[Tensor] = None
    frozen: bool = False


# Probe positions (image, row, column) whose features a snapshot keeps per layer, evenly
# spaced over the probe: enough for the rank of a 512-channel layer, small to copy and keep.
FEATURE_POSITIONS = 512


@dataclass(frozen=True)
class LayerHealth(_Frozen):
    """What a layer's probe features say about its representation at one snapshot.

    The features are :attr:`LayerCapture.features`, centred per channel.

    Attributes:
        effective_rank: exp of the entropy of the normalized singular values (Roy and
            Vetterli 2007): from 1 (one direction) to the number of channels.
        srank: the fewest singular values whose sum reaches 1 - delta of the total, delta
            0.01 (Kumar et al. 2020).
        cka_to_first: linear CKA (Kornblith et al. 2019) between the features now and at
            the run's first snapshot: 1 for the same representation up to rotation and scale.
    """

    effective_rank: float
    srank: int
    cka_to_first: float


@dataclass(frozen=True)
class ReceptiveField:
    """The input pixels one output position of a conv sees, per axis ``(y, x)``.

    Output position ``(y, x)`` sees input rows ``offset[0] + y * stride[0]`` up to (not
    including) that plus ``size[0]``, and likewise for columns.

    Attributes:
        size: height and width of the field in input pixels.
        stride: input pixels between the fields of neighbouring output positions.
        offset: top-left input pixel of output position ``(0, 0)``'s field; negative
            where the field starts in the padding.
    """

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """The field of output position ``(y, x)`` in input pixels.

        Args:
            y: output row.
            x: output column.

        Returns:
            ``(top, left, bottom, right)``, bottom and right exclusive. The box may extend
            past the image (into the padding); callers clip it.
        """
        top = self.offset[0] + y * self.stride[0]
        left = self.offset[1] + x * self.stride[1]
        return top, left, top + self.size[0], left + self.size[1]


@dataclass(frozen=True)
class CapturedSnapshot(_Frozen):
    """What the probe pass captured at one training step, complete once its copy has arrived.

    Attributes:
        step: the training step.
        layers: conv name -> what was captured of it, in the order of the watched convs.
        probe_images: the probe's input images ``(N, C, H, W)``, when they are to be drawn
            (the first snapshot of a run).
        probe_inputs: the probe images ``(N, C, H, W)``, when peak patches are drawn.
        probe_non_finite: per probe image, how many of its values are NaN or Inf ``(N,)``,
            int64; shipped with ``probe_images``.
        receptive_fields: conv name -> its receptive field, for the layers whose peak patches are drawn.
        draw_views: whether the costlier views (peak patches, through the layers, strips) are drawn.
        filmstrip_layers: the convs whose filters are kept for a filmstrip.
    """

    step: int
    layers: Mapping[str, LayerCapture] = field(default_factory=_no_entries)
    probe_images: Optional[Tensor] = None
    probe_inputs: Optional[Tensor] = None
    probe_non_finite: Optional[Tensor] = None
    receptive_fields: Mapping[str, ReceptiveField] = field(default_factory=_no_entries)
    draw_views: bool = False
    filmstrip_layers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Snapshot(_Frozen):
    """A captured snapshot and what the run state made of it: the record a snapshot's views
    are drawn from, and what :meth:`~lightning_filterviz.FilterVisualizer.snapshot` returns.

    Attributes:
        step: the training step.
        layers: conv name -> what was captured of it.
        probe_images: the probe's input images ``(N, C, H, W)``, when they are to be drawn.
        probe_inputs: the probe images ``(N, C, H, W)``, when peak patches are drawn.
        receptive_fields: conv name -> its receptive field, for the layers whose peak patches are drawn.
        draw_views: whether the costlier views (peak patches, through the layers, strips) are drawn.
        dead_filters: conv name -> dead filter indices after this snapshot (the convs judged).
        dormant_filters: conv name -> dormant filter indices at this snapshot.
        symmetric_ranges: conv name -> the fixed half-range of ``"symmetric"`` normalization.
        drift: conv name -> per-filter cosine distance from the initial filters, ``(F,)``.
        weight_norm_ratio: conv name -> per-filter weight norm over the initial one, ``(F,)``.
        filmstrips: conv name -> the filmstrip's rows so far, when it is drawn with this snapshot.
        describes_layers: whether this snapshot logs the table of watched convs (the first of a run).
        health: conv name -> its representation's health signals, for the convs whose
            activation (or output) the probe saw with finite values.
        grad_scores: conv name -> per-filter gradient score ``(out_channels,)`` (GraMa: mean
            ``|dL/dW_c|`` over the layer's average), for the convs whose gradients were read
            for this snapshot, all finite, and not frozen.
        grad_dormant_filters: conv name -> the filters whose gradient score is ``<=
            grad_dormant_tau``, for the convs in :attr:`grad_scores`.
    """

    step: int
    layers: Mapping[str, LayerCapture] = field(default_factory=_no_entries)
    probe_images: Optional[Tensor] = None
    probe_inputs: Optional[Tensor] = None
    receptive_fields: Mapping[str, ReceptiveField] = field(default_factory=_no_entries)
    draw_views: bool = False
    dead_filters: Mapping[str, tuple[int, ...]] = field(default_factory=_no_entries)
    dormant_filters: Mapping[str, tuple[int, ...]] = field(default_factory=_no_entries)
    symmetric_ranges: Mapping[str, float] = field(default_factory=_no_entries)
    drift: Mapping[str, Tensor] = field(default_factory=_no_entries)
    weight_norm_ratio: Mapping[str, Tensor] = field(default_factory=_no_entries)
    filmstrips: Mapping[str, tuple[np.ndarray, ...]] = field(default_factory=_no_entries)
    describes_layers: bool = False
    health: Mapping[str, LayerHealth] = field(default_factory=_no_entries)
    grad_scores: Mapping[str, Tensor] = field(default_factory=_no_entries)
    grad_dormant_filters: Mapping[str, tuple[int, ...]] = field(default_factory=_no_entries)

    def result(self, timeout: Optional[float] = None) -> Snapshot:
        """The snapshot itself: what :meth:`~lightning_filterviz.FilterVisualizer.snapshot`
        returns has a ``result()`` whether it ran at once or on the writer thread."""
        return self


@dataclass(frozen=True)
class LayerExamples(_Frozen):
    """The strongest examples of a layer's drawn filters, strongest first.

    Attributes:
        values: ``(F, k)`` the activation's peak on each example (``-inf`` where a filter
            has fewer than ``k`` examples).
        indices: ``(F, k)`` int64 dataset index of each example, ``-1`` where not known.
        positions: ``(F, k, 2)`` int64 input pixel ``(y, x)`` at the centre of the
            receptive field of the peak.
        patches: ``(F, k, C, h, w)`` float32 input pixels of each example's context window:
            at least 32 input pixels a side around the peak (the receptive field, where it
            is larger), inside the image where the image is large enough, sampled nearest at
            most ``patch_pixels`` per side; NaN where the window lies outside the image.
        boxes: ``(F, k, 4)`` int64 the receptive field in the patch's pixels: ``(top, left,
            height, width)``; it may reach past the patch's edges (a field in the padding).
    """

    values: Tensor
    indices: Tensor
    positions: Tensor
    patches: Tensor
    boxes: Tensor

    def as_lists(self) -> list[list[tuple[Optional[int], float]]]:
        """``[[(dataset_index, value), ...] per filter]``, strongest first, only real examples."""
        examples = []
        for values, indices in zip(self.values.tolist(), self.indices.tolist()):
            kept = [(index, value) for value, index in zip(values, indices) if value != float("-inf")]
            examples.append([(None if index == NO_INDEX else index, value) for index, value in kept])
        return examples

    def position_lists(self) -> list[list[tuple[int, int]]]:
        """``[[(y, x), ...] per filter]``, in the order of :meth:`as_lists`."""
        positions = []
        for values, where in zip(self.values.tolist(), self.positions.tolist()):
            positions.append([(y, x) for value, (y, x) in zip(values, where) if value != float("-inf")])
        return positions


@dataclass(frozen=True)
class DatasetExamples(_Frozen):
    """One validation run's dataset examples, on the host.

    Attributes:
        step: the training step of the validation run.
        layers: conv name -> its examples.
        weights: conv name -> its drawn filters' weights ``(F, C_in / groups, kH, kW)``, NCHW.
        rgb: conv name -> whether its filters are drawn in colour.
    """

    step: int
    layers: Mapping[str, LayerExamples] = field(default_factory=_no_entries)
    weights: Mapping[str, Tensor] = field(default_factory=_no_entries)
    rgb: Mapping[str, bool] = field(default_factory=_no_entries)


@dataclass(frozen=True)
class FeatureVisualizations(_Frozen):
    """Feature visualizations of some convs' filters at one step, on the host.

    Attributes:
        step: the training step of the weights they were made from.
        images: conv name -> per drawn filter, the input optimized to raise its mean response,
            as displayed: ``uint8`` ``(F, H, W, 3)`` for an RGB input, ``(F, H, W, 1)`` otherwise.
        weights: conv name -> its drawn filters' weights ``(F, C_in / groups, kH, kW)``, NCHW.
        rgb: conv name -> whether its filters are drawn in colour.
        seconds: how long making them took, all convs together.
    """

    step: int
    images: Mapping[str, np.ndarray] = field(default_factory=_no_entries)
    weights: Mapping[str, Tensor] = field(default_factory=_no_entries)
    rgb: Mapping[str, bool] = field(default_factory=_no_entries)
    seconds: float = 0.0


@dataclass(frozen=True)
class RunEnding(_Frozen):
    """What the end of a run draws.

    Attributes:
        step: the last training step.
        filmstrips: conv name -> every row of its filmstrip (empty when a snapshot at ``step``
            drew them already).
        latest: the latest snapshot, when it did not draw its drift strips (they are drawn
            at its own step).
        final: the trained model's last look, when the snapshot at ``step`` did not draw the
            costlier views: captured with them, judged with the verdicts as they stand (it
            is not another snapshot: no statistic counts it), drawn at ``step``.
        probe_images: the run's probe images ``(N, C, H, W)``, drawn again at ``step`` so that
            every image of the run's first step has one at its last.
    """

    step: int
    filmstrips: Mapping[str, tuple[np.ndarray, ...]] = field(default_factory=_no_entries)
    latest: Optional[Snapshot] = None
    final: Optional[Snapshot] = None
    probe_images: Optional[Tensor] = None


@dataclass(frozen=True)
class HistoryFile(_Frozen):
    """One file of a run's history, as arrays (see :mod:`lightning_filterviz.core.history`).

    Attributes:
        name: the file's name in the history directory.
        arrays: array name -> array.
        completes: whether it takes the place of the file this run saved under ``name``
            (the trained model's last look adds the feature maps to the last snapshot's
            file); a name this run has not saved is written as a new file.
    """

    name: str
    arrays: Mapping[str, np.ndarray] = field(default_factory=_no_entries)
    completes: bool = False


@dataclass(frozen=True)
class Rendered(_Frozen):
    """What the views made of a snapshot, a validation run or a run's end, at one step.

    Attributes:
        step: the step it is logged at.
        images: tag -> image (``(H, W, 3)`` ``uint8`` or an indexed image).
        scalars: tag -> value.
        tables: tag -> table.
        history: files for the run's history directory.
    """

    step: int
    images: Mapping[str, Any] = field(default_factory=_no_entries)
    scalars: Mapping[str, float] = field(default_factory=_no_entries)
    tables: Mapping[str, Table] = field(default_factory=_no_entries)
    history: tuple[HistoryFile, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.images or self.scalars or self.tables or self.history)


@dataclass(frozen=True)
class Table:
    """A small table of text cells: logged as a table where the logger has them
    (W&B), as Markdown elsewhere (TensorBoard's text tab, MLflow, the PNG directory).

    Attributes:
        columns: the column headers.
        rows: the cells, one tuple per row.
    """

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def markdown(self) -> str:
        lines = [_markdown_row(self.columns), "|" + "---|" * len(self.columns)]
        lines.extend(_markdown_row(row) for row in self.rows)
        return "\n".join(lines)

    def text(self) -> str:
        """The table as aligned plain-text columns, for a console (Markdown's backticks dropped)."""
        cells = [self.columns, *self.rows]
        cells = [tuple(cell.replace("`", "") for cell in row) for row in cells]
        widths = [max(len(row[column]) for row in cells) for column in range(len(self.columns))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join(lines)


def _markdown_row(cells: tuple[str, ...]) -> str:
    return "| " + " | ".join(cells) + " |"
