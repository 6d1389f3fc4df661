"""The table of watched convs: the activation each maps to (or why none), and how training
batches are watched for it. Logged once per run, and shown on the console."""

from __future__ import annotations

from lightning_filterviz.core.records import Snapshot, Table

__all__ = ["layer_table"]


def layer_table(snapshot: Snapshot) -> Table:
    """Each watched conv, the activation it maps to (or why it has none), and how
    ``track_training_batches`` watches it: a hook on the module in front of its ReLU, or
    the tracer (which costs more per step)."""
    rows = []
    for name, layer in snapshot.layers.items():
        activation = layer.activation or f"none: {layer.no_activation_reason or 'activations not captured'}"
        if layer.pre_activation:
            activation += "; its output is drawn, signed (pre-activation)"
        if layer.activation and layer.through:
            activation += f" (through {', '.join(layer.through)})"
        judged = "yes" if layer.zeroing else "no"
        rows.append((name, str(layer.out_channels), activation, judged, layer.watched_by or "-"))
    columns = ("conv", "filters", "activation", "dead judged", "training batches watched by")
    return Table(columns=columns, rows=tuple(rows))
