"""Layer names and the patterns that choose them: one rule for every argument that takes them.

A pattern chooses a layer when it equals the layer's qualified name or matches it as an
``fnmatch`` pattern (``"features.*"``). Pure Python, so the report can use it without torch.
"""

from __future__ import annotations

import fnmatch
from typing import Optional, Sequence

__all__ = ["matches", "resolve_layer_patterns", "unmatched_patterns"]


def matches(name: str, pattern: str) -> bool:
    """Whether ``pattern`` chooses the layer called ``name``."""
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


def resolve_layer_patterns(requested: Optional[Sequence[str]], watched: Sequence[str]) -> list[str]:
    """``None``: the first watched layer; otherwise the watched names that a pattern chooses, in order."""
    if requested is None:
        return list(watched[:1])
    return [name for name in watched if any(matches(name, pattern) for pattern in requested)]


def unmatched_patterns(requested: Optional[Sequence[str]], watched: Sequence[str]) -> list[str]:
    """The patterns in ``requested`` that choose none of the ``watched`` layers."""
    return [pattern for pattern in requested or () if not any(matches(name, pattern) for name in watched)]
