"""Reading a few arrays out of a history file, fast.

``numpy.load`` on an NPZ file builds Python's ``ZipFile``, which reads every entry of the
archive's directory into an object, and parses each array's header with ``literal_eval``:
about 1.5 ms for a snapshot of 20 convs, before any array is read. The Filters tab reads a
layer's few arrays from each of a run's snapshot files (a thousand of them in a long run),
so it reads them here instead: the file's bytes once, the directory's names with
``struct``, and each wanted array as a view of those bytes. Only what ``numpy.savez``
writes is read this way (stored, not compressed, no ZIP64, the ``.npy`` format 1.0 to 3.0
with a plain dtype); for anything else :func:`read_arrays` falls back to ``numpy.load``.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Iterable

import numpy as np

__all__ = ["read_arrays"]

_END_OF_DIRECTORY = b"PK\x05\x06"
_DIRECTORY_ENTRY = b"PK\x01\x02"
_LOCAL_HEADER = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"
_STORED = 0
# The header numpy.save writes: {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
_NPY_HEADER = re.compile(
    r"\{'descr': '(?P<descr>[<>|=]?[a-zA-Z]\d*)', 'fortran_order': (?P<fortran>True|False), "
    r"'shape': \((?P<shape>[\d, ]*)\), \}"
)


class _NotPlain(Exception):
    """A file this reader does not read; ``numpy.load`` does."""


def read_arrays(path: Path, keys: Iterable[str]) -> tuple[dict[str, np.ndarray], frozenset[str]]:
    """The arrays named ``keys`` that the NPZ file ``path`` holds, and the names of all it holds.

    Raises:
        OSError: if the file cannot be read.
        ValueError: if it is not an NPZ file, or a damaged one.
    """
    data = path.read_bytes()
    try:
        entries = _directory(data)
        return {key: _array(data, entries[key]) for key in keys if key in entries}, frozenset(entries)
    except _NotPlain:
        return _with_numpy(path, keys)
    except (struct.error, IndexError) as error:
        raise ValueError(f"{path} is not a whole NPZ file: {error}") from error


def _directory(data: bytes) -> dict[str, tuple[int, int]]:
    """Array name -> (offset of its local header, stored size), from the archive's directory."""
    end = data.rfind(_END_OF_DIRECTORY, max(0, len(data) - 65557))
    if end < 0:
        raise ValueError("no ZIP directory at the end of the file")
    count, _size, offset = struct.unpack_from("<HII", data, end + 10)
    if offset == 0xFFFFFFFF or count == 0xFFFF:
        raise _NotPlain  # ZIP64
    entries = {}
    position = offset
    for _ in range(count):
        if data[position : position + 4] != _DIRECTORY_ENTRY:
            raise ValueError("a damaged ZIP directory")
        method, = struct.unpack_from("<H", data, position + 10)
        stored, = struct.unpack_from("<I", data, position + 20)
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", data, position + 28)
        local, = struct.unpack_from("<I", data, position + 42)
        name = data[position + 46 : position + 46 + name_length].decode("utf-8")
        if method != _STORED or stored == 0xFFFFFFFF or local == 0xFFFFFFFF:
            raise _NotPlain
        entries[name[:-4] if name.endswith(".npy") else name] = (local, stored)
        position += 46 + name_length + extra_length + comment_length
    return entries


def _array(data: bytes, entry: tuple[int, int]) -> np.ndarray:
    local, stored = entry
    if data[local : local + 4] != _LOCAL_HEADER:
        raise ValueError("a damaged ZIP entry")
    name_length, extra_length = struct.unpack_from("<HH", data, local + 26)
    start = local + 30 + name_length + extra_length
    npy = memoryview(data)[start : start + stored]
    if len(npy) != stored or bytes(npy[:6]) != _NPY_MAGIC:
        raise ValueError("a damaged array in the archive")
    major = npy[6]
    header_length, skip = (struct.unpack_from("<H", npy, 8)[0], 10) if major == 1 else (struct.unpack_from("<I", npy, 8)[0], 12)
    header = bytes(npy[skip : skip + header_length]).decode("latin1").strip()
    dtype, shape, fortran = _header(header)
    body = npy[skip + header_length :]
    count = int(np.prod(shape)) if shape else 1
    values = np.frombuffer(body, dtype=dtype, count=count)
    return values.reshape(shape, order="F" if fortran else "C")


def _header(header: str) -> tuple[np.dtype, tuple[int, ...], bool]:
    match = _NPY_HEADER.fullmatch(header)
    if match is None:
        raise _NotPlain  # a structured dtype, or a header another writer laid out
    dtype = np.dtype(match["descr"])
    if dtype.hasobject:
        raise _NotPlain
    shape = tuple(int(part) for part in match["shape"].replace(" ", "").split(",") if part)
    return dtype, shape, match["fortran"] == "True"


def _with_numpy(path: Path, keys: Iterable[str]) -> tuple[dict[str, np.ndarray], frozenset[str]]:
    with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as data:
        names = frozenset(data.files)
        return {key: data[key] for key in keys if key in names}, names
