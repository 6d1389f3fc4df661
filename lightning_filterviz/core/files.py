"""Files written whole or not at all, and never over another file.

Every file the monitor writes of its own (history files, PNG files) goes through
:func:`write_new_file`: the bytes go to a hidden ``.<name>.partial`` file first, which is
then linked into place under a name no file holds yet, so that

- a reader never sees half of a file;
- a file that is there already (an earlier fit into the same log directory, a second
  snapshot at the same step) is never replaced: the new one gets the first free copy
  number, ``step_00000010-2.npz``, ``step_00000010-3.npz``, ...;
- a write that fails (a full disk) leaves no partial file behind.

:func:`replace_own_file` is the one exception: it replaces, whole, a file the caller wrote
itself earlier with :func:`write_new_file`.

:func:`copy_order` sorts such names back into the order they were written. Pure Python.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from pathlib import Path
from typing import Iterator, Union

__all__ = ["copy_order", "partial_path", "replace_own_file", "write_new_file"]

# ``<stem>-<copy><suffix>``: the name a file gets when ``<stem><suffix>`` is taken.
_COPY = re.compile(r"^(?P<stem>.*?)(?:-(?P<copy>[2-9]|[1-9]\d+))?(?P<suffix>\.[^.]*)?$")

Data = Union[bytes, bytearray, memoryview]


def write_new_file(path: Union[str, os.PathLike], data: Data) -> Path:
    """Write ``data`` to ``path``, or, when a file is there already, to the first free
    ``<stem>-<n><suffix>`` (``n`` = 2, 3, ...) beside it. The file appears whole or not at all.

    Args:
        path: the file's name; its directory is created when missing.
        data: the bytes.

    Returns:
        The path written: ``path`` unless a file held that name.

    Raises:
        OSError: if the directory cannot be made or the file cannot be written (a full
            disk, a read-only directory); no partial file is left behind.

    Example::

        first = write_new_file("out/step_00000010.npz", data)   # out/step_00000010.npz
        second = write_new_file("out/step_00000010.npz", data)  # out/step_00000010-2.npz
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(target)
    try:
        partial.write_bytes(data)
        return _link_under_a_free_name(partial, target)
    finally:
        # Linked into place, failed, or renamed by the fallback: the partial name goes either way.
        _remove(partial)


def replace_own_file(path: Union[str, os.PathLike], data: Data) -> Path:
    """Replace ``path``, a file the caller wrote itself, with ``data``; a reader sees the old
    file or the new one, whole, never half of either.

    Raises:
        OSError: if it cannot be written; no partial file is left behind and ``path`` is unchanged.
    """
    target = Path(path)
    partial = partial_path(target)
    try:
        partial.write_bytes(data)
        os.replace(partial, target)
    finally:
        _remove(partial)
    return target


def partial_path(path: Union[str, os.PathLike]) -> Path:
    """The hidden file that ``path``'s bytes are written to before it appears: ``.<name>.partial``."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def copy_order(path: Union[str, os.PathLike]) -> tuple[str, int]:
    """A sort key: the name without its copy number, then the copy number (1 for the
    first file of a name), so that ``step_5.npz`` sorts before ``step_5-2.npz`` and
    ``step_5-10.npz`` after ``step_5-9.npz`` (a plain sort of the names puts ``-`` before ``.``)."""
    name = Path(path).name
    match = _COPY.match(name)
    if match is None:  # unreachable: every part of the pattern is optional
        return name, 1
    return f"{match['stem']}{match['suffix'] or ''}", int(match["copy"] or 1)


def _link_under_a_free_name(partial: Path, target: Path) -> Path:
    for candidate in _candidates(target):
        try:
            # A hard link fails when the name is taken, even by a file another process has just
            # made: the check and the write are one step, so nothing is ever replaced.
            os.link(partial, candidate)
        except FileExistsError:
            continue
        except OSError:
            # A file system without hard links: check, then rename (replaces nothing this process sees).
            if os.path.lexists(candidate):
                continue
            os.replace(partial, candidate)
        return candidate
    raise AssertionError("unreachable: the candidates never run out")


def _candidates(target: Path) -> Iterator[Path]:
    yield target
    for copy in itertools.count(2):
        yield target.with_name(f"{target.stem}-{copy}{target.suffix}")


def _remove(path: Path) -> None:
    # Gone already after a rename; and cleaning up must not hide the error that brought us here.
    with contextlib.suppress(OSError):
        path.unlink()
