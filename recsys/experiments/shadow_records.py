"""Shadow records: one model's scored list, one shadowed request, and top-k agreement."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RECORD_FORMAT = 1  # bump when the record layout changes; readers reject other formats
Item = int | str
Metrics = dict[str, float | int | None]


@dataclass(frozen=True)
class ScoredList:
    """One model's answer: item ids best first, their scores, model versions, latency in ms.

    ``scores`` is empty when the list was not scored (a fallback) or has one finite score per
    item. ``latency_ms=None`` on a challenger result means "measure it for me".
    """

    versions: Mapping[str, str]
    items: Sequence[Item]
    scores: Sequence[float] = ()
    latency_ms: float | None = None

    def __post_init__(self) -> None:
        versions = dict(self.versions)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in versions.items()):
            raise ValueError(f"versions must map str to str, got {versions!r}")
        items = tuple(_item(i) for i in _plain(self.items))
        scores = tuple(float(s) for s in _plain(self.scores))
        if scores and len(scores) != len(items):
            raise ValueError(f"got {len(items)} items but {len(scores)} scores (expected equal)")
        bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
        if bad:
            raise ValueError(f"scores must be finite, got {scores[bad[0]]} at position {bad[0]}")
        latency = self.latency_ms
        if latency is not None and not (math.isfinite(latency) and latency >= 0):
            raise ValueError(f"latency_ms must be a finite number >= 0 or None, got {latency}")
        object.__setattr__(self, "versions", versions)
        object.__setattr__(self, "items", items)
        object.__setattr__(self, "scores", scores)
        if latency is not None:
            object.__setattr__(self, "latency_ms", float(latency))

    def to_dict(self) -> dict[str, Any]:
        return {
            "versions": dict(self.versions),
            "items": list(self.items),
            "scores": list(self.scores),
            "latency_ms": self.latency_ms,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoredList:
        return cls(data["versions"], data["items"], data["scores"], data["latency_ms"])


@dataclass(frozen=True)
class ShadowRecord:
    """One shadowed request. Exactly one of ``challenger`` and ``error`` is set; ``timestamp``
    is unix seconds at submit; ``agreement`` is ``agreement()``'s dict when the challenger
    answered."""

    request_id: str
    user_id: str
    timestamp: float
    k: int
    champion: ScoredList
    challenger: ScoredList | None = None
    error: str | None = None
    agreement: Metrics | None = None

    def __post_init__(self) -> None:
        if (self.challenger is None) == (self.error is None):
            raise ValueError(
                f"set exactly one of challenger and error, got {self.challenger!r} "
                f"and {self.error!r}"
            )
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")

    def to_json(self) -> str:
        document = {
            "format": RECORD_FORMAT,
            "request_id": self.request_id,
            "user_id": self.user_id,
            "timestamp": self.timestamp,
            "k": self.k,
            "champion": self.champion.to_dict(),
            "challenger": None if self.challenger is None else self.challenger.to_dict(),
            "error": self.error,
            "agreement": self.agreement,
        }
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> ShadowRecord:
        """Parse ``to_json`` output; ValueError (naming the problem) for anything else."""
        try:
            data = json.loads(text)
            if data["format"] != RECORD_FORMAT:
                raise ValueError(f"record format {data['format']!r}, expected {RECORD_FORMAT}")
            challenger = data["challenger"]
            return cls(
                request_id=data["request_id"],
                user_id=data["user_id"],
                timestamp=data["timestamp"],
                k=data["k"],
                champion=ScoredList.from_dict(data["champion"]),
                challenger=None if challenger is None else ScoredList.from_dict(challenger),
                error=data["error"],
                agreement=data["agreement"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a shadow record ({type(exc).__name__}: {exc})") from exc


def agreement(
    champion_items: Sequence[Item],
    challenger_items: Sequence[Item],
    k: int,
    *,
    champion_scores: Sequence[float] = (),
    challenger_scores: Sequence[float] = (),
) -> Metrics:
    """How far two ranked lists agree in their top ``k`` (duplicates count once, first place).

    ``overlap_at_k``: shared items / the longer of the two top-k lists (None if both empty).
    ``spearman``/``kendall``: rank correlation of the shared items' orders (None below 2).
    ``mean_score_delta``: mean challenger − champion score over shared items (None without
    scores or shared items). Also ``k`` and ``shared`` (count).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ours, theirs = _top_positions(champion_items, k), _top_positions(challenger_items, k)
    shared = [item for item in ours if item in theirs]  # in champion order
    longer = max(len(ours), len(theirs))
    spearman = kendall = delta = None
    if len(shared) >= 2:
        spearman, kendall = _rank_correlations(np.array([theirs[item] for item in shared]))
    if shared and len(champion_scores) and len(challenger_scores):
        ours_s = np.array([champion_scores[ours[item]] for item in shared], dtype=np.float64)
        theirs_s = np.array([challenger_scores[theirs[item]] for item in shared], dtype=np.float64)
        delta = float(np.mean(theirs_s - ours_s))
    return {
        "k": k,
        "shared": len(shared),
        "overlap_at_k": len(shared) / longer if longer else None,
        "spearman": spearman,
        "kendall": kendall,
        "mean_score_delta": delta,
    }


def _top_positions(items: Sequence[Item], k: int) -> dict[Item, int]:
    """First position of each of the first ``k`` distinct items."""
    positions: dict[Item, int] = {}
    for position, item in enumerate(_plain(items)):
        if len(positions) == k:
            break
        positions.setdefault(item, position)
    return positions


def _rank_correlations(other_positions: np.ndarray) -> tuple[float, float]:
    """(Spearman rho, Kendall tau) between 0..n-1 and the ranks of ``other_positions``.

    Positions are distinct, so there are no ties and tau-a equals tau-b.
    """
    n = len(other_positions)
    ours = np.arange(n)
    theirs = np.argsort(np.argsort(other_positions))
    spearman = 1.0 - 6.0 * float(np.sum((ours - theirs) ** 2)) / (n * (n * n - 1))
    upper = np.triu_indices(n, k=1)
    concordance = np.sign(ours[:, None] - ours[None, :]) * np.sign(theirs[:, None] - theirs)
    kendall = float(concordance[upper].sum()) / (n * (n - 1) / 2)
    return spearman, kendall


def _plain(values: Any) -> list[Any]:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def _item(value: Any) -> Item:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return value
    raise ValueError(f"item ids must be int or str, got {value!r}")
