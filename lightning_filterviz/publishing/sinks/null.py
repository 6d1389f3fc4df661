"""A sink that writes nothing."""

from __future__ import annotations

from lightning_filterviz.publishing.sinks.base import Sink

__all__ = ["NullSink"]


class NullSink(Sink):
    """Writes nothing: a stand-in until the real destination is known, and on ranks other
    than zero. Every method is :class:`~lightning_filterviz.publishing.sinks.base.Sink`'s no-op.

    Example:
        >>> NullSink().add_scalar("filterviz/drift/conv1", 0.5, step=0)  # goes nowhere
    """
