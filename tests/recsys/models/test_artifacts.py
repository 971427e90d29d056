"""Bundle files read back as serving uses them (recsys/models/artifacts.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from recsys.models.artifacts import UserHistories, load_user_histories, save_user_histories


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
