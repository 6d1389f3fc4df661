"""Reading a few arrays out of a history file, fast.

``numpy.load`` on an NPZ file builds Python's ``ZipFile``, which reads every entry of the
archive's directory into an object, and parses each array's header with ``literal_eval``:
about 1.5 ms for a snapshot of 20 convs, before any array is read. The Filters tab reads a
layer's few arrays from each of a run's snapshot files (a thousand of them in a long run),
so it reads them here instead: the file's bytes once, the directory's names with
``struct``, and each wanted array as a view of those bytes. Only what ``numpy.savez``
writes is read this way (stored, not compressed, no ZIP64, the ``.npy`` format 1.0 to 3.0
with a plain dtype); for anything else :func:`read_arrays` falls back to ``numpy.load``.

:func:`read_rows` serves the large files (feature visualizations: a picture the size of the
model's input per filter): it seeks to what it reads, so that one filter's picture costs its
own bytes, not the whole file's.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import BinaryIO, Iterable, Mapping, Optional

import numpy as np

__all__ = ["read_arrays", "read_rows"]

_END_OF_DIRECTORY = b"PK\x05\x06"
_DIRECTORY_ENTRY = b"PK\x01\x02"
_LOCAL_HEADER = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"
_STORED = 0
# The end record of a ZIP archive, with the longest comment it can have.
_LONGEST_END_RECORD = 65557
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


def read_rows(
    path: Path, keys: Iterable[str] = (), rows: Mapping[str, int] = {}
) -> tuple[dict[str, np.ndarray], frozenset[str]]:
    """Like :func:`read_arrays`, reading only the bytes of what is asked: the arrays named
    ``keys`` whole, and of each array named in ``rows``, one row (its index along the first
    axis; left out when the array has no such row).

    Raises:
        OSError: if the file cannot be read.
        ValueError: if it is not an NPZ file, or a damaged one.
    """
    # Seeks and reads, not a memory map: a file cut short while it is read (copied over by
    # hand) gives short reads, which are caught, where a map would kill the process.
    with open(path, "rb") as handle:
        try:
            entries = _directory_at_end(handle)
            wanted: list[tuple[str, Optional[int]]] = [*((key, None) for key in keys), *rows.items()]
            found = {}
            for key, row in wanted:
                values = _read_array(handle, entries[key], row) if key in entries else None
                if values is not None:
                    found[key] = values
            return found, frozenset(entries)
        except _NotPlain:
            pass
        except (struct.error, IndexError) as error:
            raise ValueError(f"{path} is not a whole NPZ file: {error}") from error
    return _rows_with_numpy(path, keys, rows)


def _directory_at_end(handle: BinaryIO) -> dict[str, tuple[int, int]]:
    """The archive's directory (see :func:`_directory`), read from the end of an open file."""
    size = handle.seek(0, 2)
    start = max(0, size - _LONGEST_END_RECORD)
    handle.seek(start)
    tail = handle.read()
    end = tail.rfind(_END_OF_DIRECTORY)
    if end < 0:
        raise ValueError("no ZIP directory at the end of the file")
    count, length, offset = struct.unpack_from("<HII", tail, end + 10)
    if offset == 0xFFFFFFFF or count == 0xFFFF:
        raise _NotPlain  # ZIP64
    handle.seek(offset)
    return _entries(handle.read(length), 0, count)


def _read_array(handle: BinaryIO, entry: tuple[int, int], row: Optional[int] = None) -> Optional[np.ndarray]:
    """An array of an open archive, or only its row ``row`` (``None`` when it has no such row)."""
    local, stored = entry
    handle.seek(local)
    header = handle.read(30)
    if header[:4] != _LOCAL_HEADER or len(header) < 30:
        raise ValueError("a damaged ZIP entry")
    name_length, extra_length = struct.unpack_from("<HH", header, 26)
    start = local + 30 + name_length + extra_length
    handle.seek(start)
    opening = handle.read(12)
    if opening[:6] != _NPY_MAGIC or len(opening) < 12:
        raise ValueError("a damaged array in the archive")
    if opening[6] == 1:
        header_length, skip = struct.unpack_from("<H", opening, 8)[0], 10
    else:
        header_length, skip = struct.unpack_from("<I", opening, 8)[0], 12
    handle.seek(start + skip)
    dtype, shape, fortran = _header(handle.read(header_length).decode("latin1").strip())
    body = start + skip + header_length
    if row is None:
        wanted_shape, offset = shape, 0
    elif fortran:
        raise _NotPlain  # a row is not one run of bytes
    elif not shape or not 0 <= row < shape[0]:
        return None
    else:
        wanted_shape = shape[1:]
        offset = row * int(np.prod(wanted_shape, dtype=np.int64)) * dtype.itemsize
    count = int(np.prod(wanted_shape, dtype=np.int64))
    length = count * dtype.itemsize
    if body + offset + length > local + 30 + name_length + extra_length + stored:
        raise ValueError("a damaged array in the archive")
    handle.seek(body + offset)
    data = handle.read(length)
    if len(data) != length:
        raise ValueError("an array cut short")
    values = np.frombuffer(data, dtype=dtype, count=count)
    return values.reshape(wanted_shape, order="F" if fortran and row is None else "C")


def _rows_with_numpy(
    path: Path, keys: Iterable[str], rows: Mapping[str, int]
) -> tuple[dict[str, np.ndarray], frozenset[str]]:
    found, names = _with_numpy(path, (*keys, *rows))
    for key, row in rows.items():
        if key in found:
            array = found.pop(key)
            if array.ndim > 0 and 0 <= row < len(array):
                found[key] = array[row]
    return found, names


def _directory(data: bytes) -> dict[str, tuple[int, int]]:
    """Array name -> (offset of its local header, stored size), from the archive's directory."""
    end = data.rfind(_END_OF_DIRECTORY, max(0, len(data) - _LONGEST_END_RECORD))
    if end < 0:
        raise ValueError("no ZIP directory at the end of the file")
    count, _size, offset = struct.unpack_from("<HII", data, end + 10)
    if offset == 0xFFFFFFFF or count == 0xFFFF:
        raise _NotPlain  # ZIP64
    return _entries(data, offset, count)


def _entries(data: bytes, position: int, count: int) -> dict[str, tuple[int, int]]:
    """The ``count`` entries of a ZIP directory that starts at ``position`` of ``data``."""
    entries = {}
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
