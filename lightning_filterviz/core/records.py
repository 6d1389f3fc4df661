"""The data one snapshot carries from the probe pass to the writer: plain records, no logic.

A leaf module: it imports nothing else of the package, so every stage can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["NO_INDEX", "PRE_ACTIVATION", "LayerCapture", "LayerExamples", "ReceptiveField", "Snapshot", "Table"]

# What a conv without an activation is recorded as: its output through normalization.
PRE_ACTIVATION = "pre-activation"
# The dataset index of an example whose index is not known (a shuffled loader, an iterable dataset).
NO_INDEX = -1


@dataclass
class LayerCapture:
    """One conv layer at one snapshot.

    The tensors are float32 CPU tensors (views into the snapshot's one host buffer, see
    :mod:`lightning_filterviz.capture.transfer`); on a GPU they hold their values once the copy
    has completed, which the writer waits for.

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
        through: the elementwise arithmetic between the conv and its activation that was
            followed as normalization (``("mul", "add")`` for a FrozenBatchNorm2d).
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


@dataclass
class Snapshot:
    """Everything captured at one training step, and what the run state made of it.

    The probe pass fills ``step``, ``layers``, ``probe_images``, ``probe_inputs``,
    ``receptive_fields`` and ``draw_views``; the run state (on the writer thread when
    writing in the background) fills the statistics and the progress fields.

    Attributes:
        step: the training step.
        layers: conv name -> what was captured of it.
        probe_images: the probe's input images ``(N, C, H, W)``, when they are to be drawn.
        dead_filters: conv name -> dead filter indices after this snapshot.
        dormant_filters: conv name -> dormant filter indices at this snapshot.
        symmetric_ranges: conv name -> the fixed half-range of ``"symmetric"`` normalization.
        layer_table: the watched convs and their activations, when the table is to be
            logged (the first snapshot).
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
    layer_table: Optional[Table] = None
    drift: dict[str, Tensor] = field(default_factory=dict)
    weight_norm_ratio: dict[str, Tensor] = field(default_factory=dict)
    filmstrips: dict[str, list[Any]] = field(default_factory=dict)
    probe_inputs: Optional[Tensor] = None
    receptive_fields: dict[str, ReceptiveField] = field(default_factory=dict)
    draw_views: bool = False


@dataclass
class LayerExamples:
    """The strongest examples of a layer's drawn filters, strongest first.

    Attributes:
        values: ``(F, k)`` the activation's peak on each example (``-inf`` where a filter
            has fewer than ``k`` examples).
        indices: ``(F, k)`` int64 dataset index of each example, ``-1`` where not known.
        positions: ``(F, k, 2)`` int64 input pixel ``(y, x)`` at the centre of the
            receptive field of the peak.
        patches: ``(F, k, C, h, w)`` float32 input pixels of each example's receptive field
            (NaN where the field lies outside the image), ``h`` and ``w`` the field's size
            capped at ``patch_pixels``.
    """

    values: Tensor
    indices: Tensor
    positions: Tensor
    patches: Tensor

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


def _markdown_row(cells: tuple[str, ...]) -> str:
    return "| " + " | ".join(cells) + " |"
