"""What the result cache keeps and for how long: per-kind TTLs of both levels, sizes, Redis limits."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class CacheConfig:
    """TTLs are per kind, in seconds; every kind needs both an L1 and an L2 TTL."""

    l1_ttl_s: Mapping[str, float] = field(
        default_factory=lambda: {"results": 30.0, "user_vector": 60.0}
    )
    l2_ttl_s: Mapping[str, float] = field(
        default_factory=lambda: {"results": 600.0, "user_vector": 3600.0}
    )
    l1_max_items: int = 10_000
    redis_timeout_s: float = 0.02
    breaker_failure_threshold: int = 5
    breaker_reset_timeout_s: float = 5.0
    generation_ttl_s: float = 7 * 24 * 3600.0  # idle users' counters expire; > every L2 TTL
    key_prefix: str = "recsys:"

    def __post_init__(self) -> None:
        if set(self.l1_ttl_s) != set(self.l2_ttl_s) or not self.l1_ttl_s:
            raise ValueError(
                f"l1_ttl_s and l2_ttl_s must name the same non-empty kinds, got "
                f"{sorted(self.l1_ttl_s)} and {sorted(self.l2_ttl_s)}"
            )
        for name in ("l1_ttl_s", "l2_ttl_s"):
            ttls = getattr(self, name)
            bad = {kind: ttl for kind, ttl in ttls.items() if not ttl > 0}
            if bad:
                raise ValueError(f"{name} must be > 0 seconds, got {bad}")
            object.__setattr__(self, name, MappingProxyType(dict(ttls)))
        if self.generation_ttl_s <= max(self.l2_ttl_s.values()):
            raise ValueError(
                f"generation_ttl_s ({self.generation_ttl_s}) must exceed the longest L2 TTL "
                f"({max(self.l2_ttl_s.values())}) so a reset counter cannot revive old entries"
            )
        for name in ("l1_max_items", "breaker_failure_threshold"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("redis_timeout_s", "breaker_reset_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
