"""The co-occurrence table: what followed each item (recsys/follows.py, training/follows.py)."""
from __future__ import annotations

import numpy as np

from recsys.follows import FollowTable
from training.follows import count_follows


def _table() -> FollowTable:
    # row 1 was followed by 2 (share 0.5) and 4 (0.25); row 3 by 1 (1.0); rows 0, 2, 4 by nothing
    return FollowTable(indptr=np.array([0, 0, 2, 2, 3, 3]), items=np.array([2, 4, 1]),
                       shares=np.array([0.5, 0.25, 1.0], dtype=np.float32))


def test_shares_after_each_recent_row_and_zero_where_never_followed() -> None:
    shares = _table().shares_after(np.array([1, 3, 2]), np.array([4, 1, 2, 3]))
    np.testing.assert_array_equal(shares, [[0.25, 0.0, 0.5, 0.0],
                                           [0.0, 1.0, 0.0, 0.0],
                                           [0.0, 0.0, 0.0, 0.0]])


def test_a_row_outside_the_table_follows_nothing() -> None:
    shares = _table().shares_after(np.array([9, -1]), np.array([1, 2]))
    np.testing.assert_array_equal(shares, np.zeros((2, 2)))


def test_features_are_the_largest_and_the_mean_share_and_zero_without_history() -> None:
    table = _table()
    np.testing.assert_allclose(table.features(np.array([1, 3]), np.array([2, 1, 3])),
                               [[0.5, 0.25], [1.0, 0.5], [0.0, 0.0]])
    np.testing.assert_array_equal(table.features(np.zeros(0, np.int64), np.array([2, 1])),
                                  np.zeros((2, 2)))


def test_arrays_round_trip_and_a_catalogue_without_them_has_no_table() -> None:
    table = _table()
    restored = FollowTable.from_arrays(table.to_arrays())
    assert restored is not None
    for name, values in table.to_arrays().items():
        np.testing.assert_array_equal(restored.to_arrays()[name], values)
    assert FollowTable.from_arrays({"follow_indptr": table.indptr}) is None


def test_counts_are_the_share_of_an_items_events_followed_within_the_window() -> None:
    # user A: 1 2 3 1 ; user B: 1 3
    histories = [np.array([1, 2, 3, 1]), np.array([1, 3])]
    table = count_follows(histories, n_rows=5, window=2)
    shares = table.shares_after(np.array([1, 2, 3]), np.array([1, 2, 3, 4]))
    # row 1 has 3 events: followed by 2 once, by 3 twice (A at 2 steps, B at 1)
    # row 2 (1 event): by 3 and by 1 (2 steps); row 3 (2 events): by 1 once
    np.testing.assert_allclose(shares, [[0.0, 1 / 3, 2 / 3, 0.0],
                                        [1.0, 0.0, 1.0, 0.0],
                                        [0.5, 0.0, 0.0, 0.0]], rtol=1e-6)
    assert count_follows(histories, n_rows=5, window=1).shares_after(
        np.array([1]), np.array([3]))[0, 0] == np.float32(1 / 3)  # B's 1 → 3 only


def test_each_row_keeps_its_largest_shares_ties_to_the_lower_row() -> None:
    histories = [np.array([1, 2]), np.array([1, 3]), np.array([1, 3]), np.array([1, 4])]
    table = count_follows(histories, n_rows=5, window=1, kept=2)
    start, end = table.indptr[1], table.indptr[2]
    np.testing.assert_array_equal(table.items[start:end], [2, 3])  # 3 (0.5), then 2 over 4
    np.testing.assert_allclose(table.shares[start:end], [0.25, 0.5])


def test_no_histories_give_an_empty_table() -> None:
    table = count_follows([], n_rows=3)
    np.testing.assert_array_equal(table.indptr, [0, 0, 0, 0])
    np.testing.assert_array_equal(table.shares_after(np.array([1]), np.array([1, 2])),
                                  np.zeros((1, 2)))
