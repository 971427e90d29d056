"""JSON bodies of /recommend answers: each cached result is encoded once, not once per hit.

A cache hit returns the very result object the miss stored, so its JSON can be kept with it; an
answer is that JSON with this request's own fields (variant, cache level, request id, latency)
appended. The bytes are the ones starlette's JSONResponse would send for the merged dict.
"""
from __future__ import annotations

import json
from typing import Any

from cachetools import LRUCache

from recsys.pipeline.recommend import Answer


def dumps(value: dict[str, Any]) -> bytes:
    """As starlette's JSONResponse renders: compact, UTF-8, NaN refused."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, indent=None,
                      separators=(",", ":")).encode("utf-8")


class ResponseEncoder:
    """`kept` results' JSON is kept, least recently served dropped first. Only results served
    from the cache are kept: a miss's result may never be asked for again (or, degraded with a
    TTL of 0, never be cached), and keeping it would hold it past its cache life."""

    def __init__(self, kept: int = 1024) -> None:
        if kept < 1:
            raise ValueError(f"kept must be >= 1, got {kept}")
        # id(result) -> (result, its JSON). The entry holds the result, so while it is kept no
        # other object can have its id; `is` still guards against a reused id after eviction.
        self._encoded: LRUCache[int, tuple[dict[str, Any], bytes]] = LRUCache(maxsize=kept)

    def encode(self, answer: Answer) -> bytes:
        """dumps({**answer.result, **answer.fields}); the result's JSON is kept when it came from
        the cache. A result must not change once encoded (cached results never do) and the
        fields must not repeat its keys."""
        result, fields = answer.result, answer.fields
        if not result or not fields:
            return dumps({**result, **fields})
        entry = self._encoded.get(id(result))
        if entry is None or entry[0] is not result:
            entry = (result, dumps(result))
            if answer.from_cache:
                self._encoded[id(result)] = entry
        return entry[1][:-1] + b"," + dumps(fields)[1:]
