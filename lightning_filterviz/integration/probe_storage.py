"""The probe batch as a checkpoint holds it: plain containers and tensors, stored compactly.

``torch.load(..., weights_only=True)`` (torch's default since 2.6) refuses any class it does
not know, so the probe is not pickled as the user's batch: a ``NamedTuple`` defined in the
training script would be ``__main__.Sample``. :func:`stored_probe` writes the batch's
structure out as dicts, lists, strings and numbers (a named tuple as its class's name, its
fields and its values; a dataclass likewise), and :func:`rebuilt_probe` builds it again: as
the user's own class where that class is already imported (the training script resuming,
say), else as a stand-in with the same fields (a named tuple of the same name, a
``SimpleNamespace`` for a dataclass). Nothing is imported or run to rebuild it.

Tensors are stored losslessly, so that a resumed run's snapshots are those it would have
taken: a floating-point tensor whose every channel holds at most 256 distinct values (an
8-bit image after ``ToTensor`` and ``Normalize``: 8 images at 224 px take 1.2 MB instead of
4.8 MB) is stored as one byte per value and a table of each channel's values (their bits,
so NaNs and signed zeros come back as they were); any other tensor as it is, copied, so that
a probe sliced from a larger tensor stores only its own samples.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import types
from collections.abc import Mapping
from typing import Any, Optional

import torch
from lightning_utilities.core.rank_zero import rank_zero_warn
from torch import Tensor

__all__ = ["STORED_PROBE_FORMAT", "is_stored_probe", "rebuilt_probe", "stored_probe"]

# Marks the stored form (a probe saved by an older version is the batch itself).
STORED_PROBE_FORMAT = "filterviz.probe.v1"
# A node of the stored structure is a dict with this key saying what it was.
_KIND = "filterviz.kind"
# Distinct values per channel that one byte per value can index.
_CODES = 256
# Tensors smaller than this are stored as they are: a table would not save anything worth it.
_SMALLEST_ENCODED = 1024
# Signed integer dtypes of the same width as each floating-point dtype, to compare values by their bits.
_BITS = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def stored_probe(batch: Any) -> dict[str, Any]:
    """The probe batch as plain containers, strings, numbers and tensors (see the module's description).

    A part of the batch that is none of these, a tensor, a NumPy array, a mapping, a sequence,
    a named tuple or a dataclass is stored as ``None``, with one warning.
    """
    dropped: list[str] = []
    encoded = {"format": STORED_PROBE_FORMAT, "batch": _encode(batch, dropped)}
    if dropped:
        rank_zero_warn(
            f"filterviz: the checkpoint keeps the probe batch without its parts of type {sorted(set(dropped))} "
            "(only tensors, arrays, numbers, strings and containers of them can be loaded with "
            "`weights_only=True`); a resumed run gets None in their place."
        )
    return encoded


def is_stored_probe(value: Any) -> bool:
    """Whether ``value`` is a probe as :func:`stored_probe` stores it."""
    return isinstance(value, dict) and value.get("format") == STORED_PROBE_FORMAT


def rebuilt_probe(stored: dict[str, Any]) -> Any:
    """The batch :func:`stored_probe` stored, with the same tensors bit for bit."""
    return _decode(stored["batch"])


# ---------------------------------------------------------------- the structure


def _encode(value: Any, dropped: list[str]) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Tensor):
        return _encoded_tensor(value)
    if type(value).__module__ == "numpy" and hasattr(value, "__array__"):
        return {_KIND: "ndarray", "tensor": _encoded_tensor(torch.as_tensor(value))}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        items = [_encode(item, dropped) for item in value]
        return {_KIND: "namedtuple", "type": _type_path(value), "fields": list(value._fields), "items": items}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {field.name: _encode(getattr(value, field.name), dropped) for field in dataclasses.fields(value)}
        return {_KIND: "dataclass", "type": _type_path(value), "fields": fields}
    if isinstance(value, Mapping):
        keys = list(value)
        return {
            _KIND: "mapping",
            "type": _type_path(value),
            "keys": [_encode(key, dropped) for key in keys],
            "values": [_encode(value[key], dropped) for key in keys],
        }
    if isinstance(value, (list, tuple)):
        kind = "tuple" if isinstance(value, tuple) else "list"
        return {_KIND: kind, "items": [_encode(item, dropped) for item in value]}
    dropped.append(type(value).__name__)
    return None


def _decode(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    kind = node[_KIND]
    if kind == "tensor":
        return _decoded_tensor(node)
    if kind == "ndarray":
        return _decoded_tensor(node["tensor"]).numpy()
    if kind in ("list", "tuple"):
        items = [_decode(item) for item in node["items"]]
        return items if kind == "list" else tuple(items)
    if kind == "namedtuple":
        return _decoded_named_tuple(node)
    if kind == "dataclass":
        return _decoded_dataclass(node)
    if kind == "mapping":
        return _decoded_mapping(node)
    raise ValueError(f"The stored probe holds a part of unknown kind {kind!r}; was it saved by a newer version?")


def _decoded_named_tuple(node: dict[str, Any]) -> Any:
    """The user's named tuple class where it is loaded and has the same fields, else a stand-in of the same name."""
    fields = tuple(node["fields"])
    cls: Any = _loaded_class(node["type"])
    if not (cls is not None and issubclass(cls, tuple) and getattr(cls, "_fields", None) == fields):
        name = node["type"].rpartition(":")[2].rpartition(".")[2]
        cls = collections.namedtuple(name if name.isidentifier() else "Batch", fields)  # type: ignore[misc,no-redef]
    return cls(*[_decode(item) for item in node["items"]])


def _decoded_dataclass(node: dict[str, Any]) -> Any:
    """The user's dataclass where it is loaded and takes the fields, else a namespace of them."""
    fields = {name: _decode(value) for name, value in node["fields"].items()}
    cls = _loaded_class(node["type"])
    if cls is not None and dataclasses.is_dataclass(cls):
        try:
            return cls(**fields)
        except TypeError:  # fields that __init__ does not take
            pass
    return types.SimpleNamespace(**fields)


def _decoded_mapping(node: dict[str, Any]) -> Any:
    """The user's mapping class where it is loaded and can be built from pairs, else a dict."""
    pairs = [(_decode(key), _decode(value)) for key, value in zip(node["keys"], node["values"])]
    cls: Any = _loaded_class(node["type"])
    if cls is not None and issubclass(cls, Mapping) and cls is not dict:
        try:
            return cls(pairs)
        except Exception:  # a mapping that cannot be built from pairs: a plain dict holds the same
            pass
    return dict(pairs)


def _type_path(value: Any) -> str:
    cls = type(value)
    return f"{cls.__module__}:{cls.__qualname__}"


def _loaded_class(path: str) -> Optional[type]:
    """The class at ``module:qualname`` if its module is already imported; nothing is imported."""
    module_name, _, qualname = path.partition(":")
    found: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found if isinstance(found, type) else None


# ---------------------------------------------------------------- tensors


def _encoded_tensor(tensor: Tensor) -> dict[str, Any]:
    tensor = tensor.detach()
    if type(tensor) is not Tensor:
        tensor = tensor.as_subclass(Tensor)  # a checkpoint loaded with weights_only knows plain tensors
    channels_last = (
        tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous()
    )
    node: dict[str, Any] = {_KIND: "tensor", "channels_last": channels_last}
    table = _channel_table(tensor)
    if table is not None:
        node["codes"], node["table"] = table
        node["dtype"] = str(tensor.dtype).removeprefix("torch.")
        node["shape"] = list(tensor.shape)
    else:
        node["values"] = tensor.to("cpu").contiguous().clone()  # its own storage: no more than its samples
    return node


def _decoded_tensor(node: dict[str, Any]) -> Tensor:
    if "values" in node:
        tensor = node["values"].clone()
    else:
        dtype = getattr(torch, node["dtype"])
        shape = node["shape"]
        codes, table = node["codes"], node["table"]
        bits = torch.gather(table, 1, codes.long())  # (channels, values of each channel)
        tensor = bits.view(dtype).reshape(shape[1], shape[0], *shape[2:]).transpose(0, 1).contiguous()
    if node.get("channels_last"):
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    return tensor


def _channel_table(tensor: Tensor) -> Optional[tuple[Tensor, Tensor]]:
    """One byte per value and a table of each channel's values (their bits), for a floating-point
    tensor ``(N, C, ...)`` whose every channel holds at most 256 distinct values; else ``None``."""
    bits_dtype = _BITS.get(tensor.dtype)
    if bits_dtype is None or tensor.dim() < 2 or tensor.numel() < _SMALLEST_ENCODED:
        return None
    channels = tensor.shape[1]
    # Each channel's values in a row: (C, N * ...), compared by their bits.
    rows = tensor.to("cpu").transpose(0, 1).reshape(channels, -1).view(bits_dtype)
    tables, codes = [], []
    if any(len(torch.unique(row[:_SMALLEST_ENCODED])) > _CODES for row in rows):
        return None  # many distinct values already among the first: no need to sort them all
    for row in rows:
        values, inverse = torch.unique(row, return_inverse=True)
        if len(values) > _CODES:
            return None
        tables.append(values)
        codes.append(inverse.to(torch.uint8))
    table = torch.zeros(channels, max(len(values) for values in tables), dtype=bits_dtype)
    for index, values in enumerate(tables):
        table[index, : len(values)] = values
    return torch.stack(codes), table
