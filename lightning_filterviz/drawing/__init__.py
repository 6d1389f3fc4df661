"""Pictures in NumPy (filter grids, feature-map grids, filmstrips, strips, dataset example
tiles), shared by the views and the report; no torch."""
