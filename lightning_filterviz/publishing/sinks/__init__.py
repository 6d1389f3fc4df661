"""Where rendered outputs go: the :class:`~lightning_filterviz.publishing.sinks.base.Sink` base
class (``base.py``), one file per sink, and the registry that picks a sink for each of a
trainer's loggers (``registry.py``)."""
