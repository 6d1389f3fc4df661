"""The offline HTML report, built from the history files; no torch."""
