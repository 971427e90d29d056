"""Bundle files read back as serving uses them (recsys/models/artifacts.py)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from recsys.models.artifacts import (
    Manifest,
    UserHistories,
    load_user_histories,
    save_user_histories,
)


def snapshot(seen: list[list[int]]) -> UserHistories:
    return UserHistories(
        user_ids=np.asarray([f"u{i}" for i in range(len(seen))]),
        histories=np.zeros((len(seen), 4), dtype=np.int64),
        attributes=np.zeros((len(seen), 1), dtype=np.int64),
        seen_indptr=np.concatenate([[0], np.cumsum([len(s) for s in seen])]).astype(np.int64),
        seen_items=np.asarray([i for s in seen for i in s], dtype=np.int64))


def test_each_users_seen_rows_come_back_sorted_and_unique(tmp_path: Path) -> None:
    """Serving's set operations take them so (training writes np.unique's); a snapshot written
    otherwise is put in order when read, a sorted one is read as it is."""
    save_user_histories(tmp_path, snapshot([[9, 2, 2, 5], [], [7], [4, 1]]))
    loaded = load_user_histories(tmp_path)
    assert loaded is not None
    assert [loaded.seen(u).tolist() for u in range(4)] == [[2, 5, 9], [], [7], [1, 4]]
    assert loaded.seen_indptr.tolist() == [0, 3, 3, 4, 6]
    ordered = snapshot([[1, 5], [2, 3], [8]])  # each row ascending, the rows not
    save_user_histories(tmp_path, ordered)
    again = load_user_histories(tmp_path)
    assert again is not None
    np.testing.assert_array_equal(again.seen_items, ordered.seen_items)
    np.testing.assert_array_equal(again.seen_indptr, ordered.seen_indptr)


def test_a_rankers_id_covers_its_policy_and_a_bundle_without_one_keeps_its_id() -> None:
    """The same ranker files chosen with another policy (paths or depth) serve differently, so
    they are another model: another BentoML tag and registered version. Without a policy the id
    is the files' and the embedding binding's, as before policies counted."""
    files = {"ranker.onnx": "ab" * 32, "scaler.json": "cd" * 32}
    bound = {"embedding_fingerprint": "0123456789abcdef"}

    def ranker(**policy: object) -> Manifest:
        return Manifest("ranker", files, {**bound, "ranking_policy": policy})

    deep = ranker(short_history=0, use_ranker=True, retrieval_until=5, ranked_candidates=100)
    assert deep.fingerprint() == ranker(ranked_candidates=100, use_ranker=True, short_history=0,
                                        retrieval_until=5).fingerprint()  # key order aside
    assert deep.fingerprint() != ranker(short_history=0, use_ranker=True, retrieval_until=5,
                                        ranked_candidates=150).fingerprint()
    lines = [f"{name}:{digest}" for name, digest in sorted(files.items())]
    lines.append("embedding:0123456789abcdef")
    assert Manifest("ranker", files, bound).fingerprint() == hashlib.sha256(
        "\n".join(lines).encode()).hexdigest()[:16]
