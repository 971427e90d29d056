"""Per-user, time-ordered item sequences (training/sequences.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from training.sequences import UserSequences, build_sequences, concat_sequences

ROWS = {"a": 1, "b": 2, "c": 3, "d": 4}


def _events(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    users, items, times = zip(*rows)
    return pd.DataFrame({"user_id": users, "item_id": items, "timestamp": times})


def test_sequences_are_time_ordered_whatever_the_row_order() -> None:
    events = _events([("u1", "c", 300), ("u2", "a", 50), ("u1", "a", 100), ("u1", "b", 200)])
    sequences = build_sequences(events, ROWS)
    assert sequences.user_ids == ["u1", "u2"]
    np.testing.assert_array_equal(sequences.sequences[0], [1, 2, 3])
    np.testing.assert_array_equal(sequences.timestamps[0], [100, 200, 300])
    np.testing.assert_array_equal(sequences.sequences[1], [1])
    assert sequences.sequences[0].dtype == np.int64 and sequences.timestamps[0].dtype == np.int64


def test_equal_timestamps_are_ordered_the_same_whatever_the_row_order() -> None:
    forward = build_sequences(_events([("u1", "d", 10), ("u1", "b", 20), ("u1", "c", 20),
                                       ("u1", "a", 20)]), ROWS)
    backward = build_sequences(_events([("u1", "d", 10), ("u1", "a", 20), ("u1", "c", 20),
                                        ("u1", "b", 20)]), ROWS)
    np.testing.assert_array_equal(forward.sequences[0], backward.sequences[0])
    assert forward.sequences[0][0] == 4 and sorted(forward.sequences[0][1:]) == [1, 2, 3]


def test_items_without_a_catalogue_row_are_dropped() -> None:
    sequences = build_sequences(_events([("u1", "a", 1), ("u1", "zzz", 2), ("u1", "b", 3)]), ROWS)
    np.testing.assert_array_equal(sequences.sequences[0], [1, 2])
    np.testing.assert_array_equal(sequences.timestamps[0], [1, 3])


def test_given_user_order_is_kept_and_users_without_events_get_empty_sequences() -> None:
    events = _events([("u1", "a", 1), ("u2", "b", 2)])
    sequences = build_sequences(events, ROWS, user_ids=["u3", "u2", "u1"])
    assert sequences.user_ids == ["u3", "u2", "u1"]
    assert sequences.position() == {"u3": 0, "u2": 1, "u1": 2}
    assert len(sequences.sequences[0]) == 0 and len(sequences.timestamps[0]) == 0
    np.testing.assert_array_equal(sequences.sequences[1], [2])
    np.testing.assert_array_equal(sequences.sequences[2], [1])


def test_no_events_give_empty_sequences() -> None:
    empty = _events([("u1", "a", 1)]).iloc[:0]
    assert build_sequences(empty, ROWS).user_ids == []
    sequences = build_sequences(empty, ROWS, user_ids=["u1"])
    assert len(sequences.sequences[0]) == 0


def test_concat_appends_the_second_part_for_the_first_parts_users() -> None:
    train = UserSequences(["u1", "u2", "u3"],
                          [np.array([1, 2]), np.array([3]), np.array([4])],
                          [np.array([10, 20]), np.array([5]), np.array([7])])
    validation = UserSequences(["u2", "u1", "u9"],
                               [np.array([4]), np.array([3]), np.array([1])],
                               [np.array([6]), np.array([30]), np.array([1])])
    merged = concat_sequences(train, validation)
    assert merged.user_ids == ["u1", "u2", "u3"]  # u9 is not a user of the first part
    np.testing.assert_array_equal(merged.sequences[0], [1, 2, 3])
    np.testing.assert_array_equal(merged.timestamps[0], [10, 20, 30])
    np.testing.assert_array_equal(merged.sequences[1], [3, 4])
    np.testing.assert_array_equal(merged.sequences[2], [4])  # nothing to append
    np.testing.assert_array_equal(train.sequences[0], [1, 2])  # inputs unchanged
