"""The engine: composes the stages (capture on the training thread; state, views and
publishing on the writer thread) behind :class:`~lightning_filterviz.FilterVisualizer`."""
