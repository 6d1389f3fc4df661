"""Every output of the monitor, one registered view per file: what a judged snapshot, a
validation run's dataset examples or the end of a run becomes (images, scalars, tables,
history arrays)."""
