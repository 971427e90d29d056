"""Shadow records: scored lists, top-k agreement of two lists, the JSON record format."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from recsys.experiments.shadow_records import ScoredList, ShadowRecord, agreement
from tests.support.shadow import (
    CHAMPION,
    NOW,
    expected_record,
)


def test_agreement_identical_and_reversed() -> None:
    same = agreement([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], 5)
    assert same == {
        "k": 5,
        "shared": 5,
        "overlap_at_k": 1.0,
        "spearman": 1.0,
        "kendall": 1.0,
        "mean_score_delta": None,
    }
    flipped = agreement([1, 2, 3, 4, 5], [5, 4, 3, 2, 1], 5)
    assert (flipped["overlap_at_k"], flipped["spearman"], flipped["kendall"]) == (1.0, -1.0, -1.0)


def test_agreement_by_hand() -> None:
    # Shared 1,2,3; the challenger swaps 2 and 3: d = (0, 1, -1), rho = 1 - 6*2/(3*8) = 0.5;
    # pairs (1,2) and (1,3) concordant, (2,3) discordant: tau = (2 - 1) / 3.
    got = agreement([1, 2, 3], [1, 3, 2], 3)
    assert got["spearman"] == pytest.approx(0.5)
    assert got["kendall"] == pytest.approx(1 / 3)
    # Top-4 share 1 and 2 in opposite orders: half the list overlaps, the order is reversed.
    half = agreement([1, 2, 3, 4], [2, 1, 9, 8], 4)
    assert (half["shared"], half["overlap_at_k"], half["spearman"], half["kendall"]) == (
        2,
        0.5,
        -1.0,
        -1.0,
    )


def test_agreement_cuts_at_k_and_handles_small_cases() -> None:
    disjoint = agreement([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1], 3)
    assert disjoint["overlap_at_k"] == 0.0 and disjoint["spearman"] is None
    one = agreement([1, 2], [1, 7], 2)
    assert one["overlap_at_k"] == 0.5 and one["kendall"] is None
    assert agreement([], [], 5)["overlap_at_k"] is None
    assert agreement([1, 1, 2], [2, 1], 2)["overlap_at_k"] == 1.0  # duplicates count once
    assert agreement([1, 2], [1, 2, 3], 10)["overlap_at_k"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        agreement([1], [1], 0)


def test_mean_score_delta_on_shared_items() -> None:
    got = agreement(
        [1, 2, 3], [3, 1, 7], 3, champion_scores=[0.9, 0.8, 0.7], challenger_scores=[0.5, 0.4, 0.3]
    )
    # item 1: 0.4 - 0.9, item 3: 0.5 - 0.7
    assert got["mean_score_delta"] == pytest.approx(-0.35)


def test_rank_correlations_match_their_definitions() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        theirs = rng.permutation(12).tolist()
        got = agreement(list(range(12)), theirs, 12)
        ranks = np.argsort(theirs)  # challenger rank of item i
        assert got["spearman"] == pytest.approx(np.corrcoef(np.arange(12), ranks)[0, 1])
        pairs = list(itertools.combinations(range(12), 2))
        score = sum(np.sign(ranks[j] - ranks[i]) for i, j in pairs)
        assert got["kendall"] == pytest.approx(score / len(pairs))


def test_record_json_round_trip_and_rejects_garbage() -> None:
    record = expected_record("r1")
    assert ShadowRecord.from_json(record.to_json()) == record
    failed = ShadowRecord("r2", "u2", NOW, 4, CHAMPION, error="TimeoutError: slow")
    assert ShadowRecord.from_json(failed.to_json().encode()) == failed
    for garbage in ("[]", "{}", '{"format": 99}', "not json"):
        with pytest.raises(ValueError, match="not a shadow record"):
            ShadowRecord.from_json(garbage)
    with pytest.raises(ValueError, match="exactly one of challenger and error"):
        ShadowRecord("r3", "u3", NOW, 4, CHAMPION)


def test_scored_list_accepts_numpy_and_checks_shapes() -> None:
    from_numpy = ScoredList(
        {"ranker": "3"}, np.array([3, 1], dtype=np.int64), np.array([0.5, 0.25], dtype=np.float32)
    )
    assert from_numpy.items == (3, 1) and from_numpy.scores == (0.5, 0.25)
    assert type(from_numpy.items[0]) is int
    with pytest.raises(ValueError, match="2 items but 1 scores"):
        ScoredList({}, [1, 2], [0.1])
    with pytest.raises(ValueError, match="finite, got nan at position 1"):
        ScoredList({}, [1, 2], [0.1, float("nan")])
    with pytest.raises(ValueError, match="item ids must be int or str, got 1.5"):
        ScoredList({}, [1.5])
