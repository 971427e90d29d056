"""The cache's configuration refuses what would break it, naming the field."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from recsys.stores.cache_config import CacheConfig


def test_defaults_are_consistent() -> None:
    config = CacheConfig()
    assert set(config.l1_ttl_s) == set(config.l2_ttl_s) == {"results", "user_vector"}
    assert config.generation_ttl_s > max(config.l2_ttl_s.values())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"l2_ttl_s": {"results": 1.0}}, "same non-empty kinds"),
        ({"l1_ttl_s": {"results": 0.0, "user_vector": 1.0}}, "l1_ttl_s must be > 0"),
        ({"generation_ttl_s": 10.0}, "generation_ttl_s"),
        ({"redis_timeout_s": 0.0}, "redis_timeout_s"),
        ({"breaker_failure_threshold": 0}, "breaker_failure_threshold"),
    ],
)
def test_config_rejects_bad_values(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(CacheConfig(), **changes)
