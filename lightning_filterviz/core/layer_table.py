"""The table of watched convs: the activation each maps to (or why none), and how training
batches are watched for it. Logged once per run, and shown on the console."""

from __future__ import annotations

from lightning_filterviz.core.records import LayerCapture, Snapshot, Table

__all__ = ["layer_table"]

# How the tracer names a fused conv that applies its own ReLU (see capture/discovery.py).
_FUSED = "fused "


def layer_table(snapshot: Snapshot) -> Table:
    """Each watched conv, the activation it maps to (or why it has none), and how
    ``track_training_batches`` watches it: a hook on the module in front of its ReLU, or
    the tracer (which costs more per step); and whether its weights are trained or frozen
    (``requires_grad=False``: no gradient, so never gradient-dormant).

    What was followed between the conv and its activation is named: ``relu (through
    max_pool2d)`` says that the activation, its statistics, maps and peaks, are the ReLU's
    output after the pool, as the model computes it."""
    rows = []
    for name, layer in snapshot.layers.items():
        judged = "yes" if layer.zeroing else "no"
        weights = "frozen" if layer.frozen else "trained"
        rows.append((name, str(layer.out_channels), _activation(layer), judged, layer.watched_by or "-", weights))
    columns = ("conv", "filters", "activation", "dead judged", "training batches watched by", "weights")
    return Table(columns=columns, rows=tuple(rows))


def _activation(layer: LayerCapture) -> str:
    activation = layer.activation or f"none: {layer.no_activation_reason or 'activations not captured'}"
    if layer.pre_activation:
        activation += "; its output is drawn, signed (pre-activation)"
    fused = [step for step in layer.through if step.startswith(_FUSED)]
    followed = [step for step in layer.through if not step.startswith(_FUSED)]
    if (layer.activation or layer.pre_activation) and followed:
        activation += f" (through {', '.join(followed)})"
    if layer.activation and fused:
        activation += f" (inside the {fused[0]} module)"
    return activation
