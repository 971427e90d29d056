"""Cache keys: canonical across orderings, distinct across models, requests and kinds."""
from __future__ import annotations

import numpy as np
import pytest

from recsys.stores.cache_keys import make_key

VERSIONS = {"retriever": "7", "ranker": "3"}


def test_key_is_canonical_and_changes_with_versions_and_kind() -> None:
    request = {"user_id": "u1", "exclude": {"i3", "i1", "i2"}, "filters": {"b": 1, "a": [2, 1]}}
    same = {"filters": {"a": [2, 1], "b": 1}, "exclude": {"i2", "i1", "i3"}, "user_id": "u1"}
    base = make_key("results", VERSIONS, request)
    assert base.startswith("results:")
    assert make_key("results", dict(reversed(VERSIONS.items())), same) == base
    assert make_key("results", {**VERSIONS, "ranker": "4"}, request) != base
    assert make_key("results", VERSIONS, {**request, "user_id": "u2"}) != base
    assert make_key("user_vector", VERSIONS, request) != base
    reordered_list = {**request, "filters": {"b": 1, "a": [1, 2]}}
    assert make_key("results", VERSIONS, reordered_list) != base  # list order is meaningful
    with pytest.raises(TypeError, match="str keys"):
        make_key("results", VERSIONS, {1: "x"})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        make_key("results", VERSIONS, {"x": float("nan")})


def test_numpy_values_key_like_their_plain_equivalents() -> None:
    plain = make_key("user_vector", VERSIONS, {"history": [3, 1, 2], "attributes": [0]})
    arrays = make_key("user_vector", VERSIONS, {"history": np.array([3, 1, 2]),
                                                 "attributes": [np.int64(0)]})
    assert arrays == plain


def test_unkeyable_value_is_named() -> None:
    with pytest.raises(TypeError, match="cannot use a object in a cache key"):
        make_key("results", VERSIONS, {"x": object()})
