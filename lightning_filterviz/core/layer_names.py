"""Layer names and the patterns that choose them: one rule for every argument that takes them.

A pattern chooses a layer when it equals the layer's qualified name or matches it as an
``fnmatch`` pattern (``"features.*"``). Pure Python, so the report can use it without torch.

A layer's name may also name a file or folder (the PNG files of a
:class:`~lightning_filterviz.publishing.sinks.directory.DirectorySink`): :func:`file_name_part`
makes it one safe path component, whatever the name holds (``/``, ``..``, a drive letter).
"""

from __future__ import annotations

import fnmatch
import hashlib
from typing import Optional, Sequence

__all__ = ["file_name_part", "matches", "resolve_layer_patterns", "unmatched_patterns"]

# Characters a file name must not hold on some system, and ``%`` and ``~``, which the encoding uses itself.
_ESCAPED = frozenset('%~/\\:*?"<>|') | frozenset(map(chr, [*range(32), 127]))
# Names Windows keeps for devices, with or without an extension.
_DEVICE_NAMES = frozenset({"CON", "PRN", "AUX", "NUL", *(f"{port}{n}" for port in ("COM", "LPT") for n in range(1, 10))})
# Longer names are shortened (most file systems allow 255 bytes), keeping a hash of the whole.
MAX_FILE_NAME_BYTES = 200
_KEPT_WHEN_SHORTENED = 150


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


def file_name_part(name: str) -> str:
    """``name`` as one file or folder name that stays where it is put: a different name for
    every different ``name``, never a path of its own.

    Characters that cannot be in a file name somewhere (``/``, ``\\``, ``:``, control
    characters, ...) and ``%`` and ``~`` are written ``%XX``; so are a trailing dot or space,
    the first letter of a Windows device name (``CON``), and the whole of ``"."`` and ``".."``;
    ``""`` becomes ``"%"``. Names of ordinary layers (``net.0``, ``features.3.conv``) stay as
    they are. A name longer than 200 bytes keeps its first 150 characters, ``~`` and a hash of
    the whole.

    Args:
        name: a layer name, or any text.

    Returns:
        A file name without a path separator, neither ``"."`` nor ``".."``.

    Example:
        >>> file_name_part("features.3")
        'features.3'
        >>> file_name_part("../../evil")
        '..%2F..%2Fevil'
        >>> file_name_part("..")
        '%2E%2E'
    """
    if name in ("", ".", ".."):
        # "%" alone, or "%2E" where the rest never escapes a dot: no other name is written so.
        return "%" if not name else "%2E" * len(name)
    encoded = "".join(_escaped(char) if char in _ESCAPED else char for char in name)
    if encoded[-1] in ". ":  # Windows drops a trailing dot or space: "a." would be "a"
        encoded = encoded[:-1] + _escaped(encoded[-1])
    if encoded.split(".", 1)[0].upper() in _DEVICE_NAMES:
        encoded = _escaped(encoded[0]) + encoded[1:]
    if len(encoded.encode("utf-8")) > MAX_FILE_NAME_BYTES:
        # "~" is escaped above, so only a shortened name holds one bare.
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        encoded = f"{_cut_before_escape(encoded, _KEPT_WHEN_SHORTENED)}~{digest}"
    return encoded


def _escaped(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))


def _cut_before_escape(encoded: str, length: int) -> str:
    # Never in the middle of a "%XX": the result stays a valid name (no lone trailing "%").
    cut = encoded[:length]
    percent = cut.rfind("%", max(len(cut) - 2, 0))
    return cut[:percent] if percent != -1 else cut
