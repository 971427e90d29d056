"""Cache keys: a stable hash of the normalised request and the model versions."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

KEY_FORMAT = 2  # bump when the key or value layout changes: old entries then never match


def make_key(kind: str, model_versions: Mapping[str, str], request: Mapping[str, Any]) -> str:
    """``kind:<blake2b-128 hex>`` of the normalised request and model versions.

    Mapping keys are sorted; sets and frozensets are sorted; lists and tuples keep their order
    (order matters for histories). Only JSON-like values, numpy scalars and arrays are accepted.
    A user's event generation is not in the key: ``ResultCache.get_or_compute(user_id=...)``
    checks it in the same round trip as the value.
    """
    document = {
        "format": KEY_FORMAT,
        "kind": kind,
        "models": _normalise(model_versions),
        "request": _normalise(request),
    }
    canonical = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return f"{kind}:{hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()}"


def generation_key(prefix: str, user_id: str) -> str:
    """The Redis key of a user's event generation: a counter that every new event of the user
    bumps, and that cached and precomputed results are stamped with."""
    return f"{prefix}generation:{user_id}"


def parse_generation(raw: bytes | None) -> int | None:
    """A generation counter read from Redis (absent = 0); None if it is not a counter."""
    try:
        return int(raw or 0)
    except ValueError:
        return None


def _normalise(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"cache key mappings need str keys, got {list(value)!r}")
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        items = [_normalise(v) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray)):
        return _normalise(value.tolist())
    raise TypeError(f"cannot use a {type(value).__name__} in a cache key: {value!r}")
