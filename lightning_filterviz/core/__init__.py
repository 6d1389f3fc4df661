"""The words every stage shares: records, settings, tags, layer names, filter and image
primitives, and the history file format. Imports nothing else of the package, and no torch
at run time, so that the report reads a run's history without it."""
