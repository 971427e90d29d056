"""Cache value codec: JSON-like values and numeric numpy arrays to bytes and back, never pickle."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np

# Values: magic, JSON length, JSON {"g": generation, "v": value}, then raw array bytes. Arrays
# appear in the JSON as {"__ndarray__": [dtype, shape, offset]}. Nothing is ever unpickled.
_MAGIC = b"RCv1"
_HEADER = struct.Struct("<4sI")
_NDARRAY = "__ndarray__"
_DTYPES = frozenset({"<f4", "<f8", "<i4", "<i8"})


class UndecodableValue(ValueError):
    """Bytes read from Redis are not a value this module wrote."""


def encode_value(value: Any, generation: int | None) -> bytes:
    """Serialise JSON-like values and numeric numpy arrays (tuples come back as lists)."""
    blobs: list[bytes] = []
    document = json.dumps({"g": generation, "v": _to_json(value, blobs)}).encode()
    return _HEADER.pack(_MAGIC, len(document)) + document + b"".join(blobs)


def _to_json(value: Any, blobs: list[bytes]) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Mapping):
        if _NDARRAY in value or not all(isinstance(k, str) for k in value):
            raise TypeError(f"cached mappings need str keys other than {_NDARRAY!r}")
        return {k: _to_json(v, blobs) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v, blobs) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.newbyteorder("<").str in _DTYPES:
        little = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
        offset = sum(len(b) for b in blobs)
        blobs.append(little.tobytes())
        return {_NDARRAY: [little.dtype.str, list(little.shape), offset]}
    raise TypeError(f"cannot cache a {type(value).__name__}; use JSON types or numeric arrays")


def decode_value(payload: bytes) -> tuple[int | None, Any]:
    """(generation, value) of an ``encode_value`` payload; arrays are read-only views."""
    try:
        magic, length = _HEADER.unpack_from(payload)
        if magic != _MAGIC:
            raise UndecodableValue(f"bad magic {magic!r}")
        blob = memoryview(payload)[_HEADER.size + length :]
        hook = partial(_from_json, blob=blob)
        document = json.loads(payload[_HEADER.size : _HEADER.size + length], object_hook=hook)
        generation = document["g"]
        if generation is not None and not isinstance(generation, int):
            raise UndecodableValue(f"bad generation {generation!r}")
        return generation, document["v"]
    except (ValueError, TypeError, KeyError, IndexError, struct.error, RecursionError) as exc:
        raise UndecodableValue(str(exc)) from exc


def _from_json(obj: dict[str, Any], blob: memoryview) -> Any:
    if _NDARRAY not in obj:
        return obj
    dtype, shape, offset = obj[_NDARRAY]
    if dtype not in _DTYPES or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise UndecodableValue(f"bad array header {obj[_NDARRAY]!r}")
    count = math.prod(shape)
    if offset < 0 or offset + count * np.dtype(dtype).itemsize > len(blob):
        raise UndecodableValue(f"array {obj[_NDARRAY]!r} runs past the payload")
    return np.frombuffer(blob, dtype=dtype, count=count, offset=offset).reshape(shape)
