"""leave_last_out: time order per user, ties broken the same whatever the row order (and not by
item id), short users kept in train."""
from __future__ import annotations

import itertools

import pandas as pd
import pytest

from recsys.errors import DataError
from training.data import Split, SyntheticConfig, generate_synthetic, leave_last_out


def _events(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    users, items, times = zip(*rows, strict=True)
    return pd.DataFrame({"user_id": users, "item_id": items, "rating": 1.0, "timestamp": times})


def parts(split: Split) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return split.train, split.validation, split.test


def test_last_is_test_previous_is_validation() -> None:
    events = _events([("u", "c", 30), ("u", "a", 10), ("u", "d", 40), ("u", "b", 20)])
    split = leave_last_out(events)
    assert split.train["item_id"].tolist() == ["a", "b"]
    assert split.validation["item_id"].tolist() == ["c"]
    assert split.test["item_id"].tolist() == ["d"]


def test_ties_are_broken_the_same_whatever_the_row_order() -> None:
    rows = [("u", "x", 5), ("u", "y", 5), ("u", "z", 5), ("u", "w", 1)]
    splits = {tuple(tuple(part["item_id"]) for part in parts(leave_last_out(_events(order))))
              for order in itertools.permutations(rows)}
    assert len(splits) == 1
    (train, validation, test), = splits
    assert train[0] == "w" and sorted([*train[1:], *validation, *test]) == ["x", "y", "z"]


def test_ties_are_not_broken_by_item_id() -> None:
    """Over many users whose last two events share a second, the test event is the larger item
    id about half of the time, as with a coin: no rule a model could learn from item identity."""
    rows = [(f"u{n}", item, t) for n in range(400)
            for item, t in ((f"i{n % 50:03d}", 1), (f"i{(n + 7) % 50 + 50:03d}", 9),
                            (f"i{(n + 3) % 50:03d}", 9))]
    split = leave_last_out(_events(rows))
    later = (split.test["item_id"] > split.validation["item_id"]).mean()
    assert 0.4 < later < 0.6


def test_a_shuffled_log_with_many_ties_splits_the_same() -> None:
    dataset = generate_synthetic(SyntheticConfig(n_users=200, n_items=400, seed=2))
    coarse = dataset.interactions.assign(timestamp=dataset.interactions["timestamp"] // 86_400)
    once, again = leave_last_out(coarse), leave_last_out(coarse.sample(frac=1.0, random_state=3))
    assert (once.test["timestamp"] == once.validation["timestamp"]).mean() > 0.2  # many ties
    for a, b in zip(parts(once), parts(again)):
        pd.testing.assert_frame_equal(a, b)


def test_users_with_fewer_than_three_events_stay_in_train() -> None:
    split = leave_last_out(_events([
        ("short", "a", 1), ("short", "b", 2), ("single", "a", 9),
        ("full", "a", 1), ("full", "b", 2), ("full", "c", 3),
    ]))
    assert sorted(split.train["user_id"]) == ["full", "short", "short", "single"]
    assert split.validation["user_id"].tolist() == ["full"]
    assert split.test["user_id"].tolist() == ["full"]


def test_parts_keep_columns_and_every_row() -> None:
    events = _events([("u", "a", 1), ("u", "b", 2), ("u", "c", 3)]).set_index(pd.Index([7, 3, 5]))
    split = leave_last_out(events)
    for part in (split.train, split.validation, split.test):
        assert list(part.columns) == list(events.columns)
        assert part.index.equals(pd.RangeIndex(len(part)))


def test_time_invariants_on_synthetic_data() -> None:
    dataset = generate_synthetic(SyntheticConfig(n_users=200, n_items=400, seed=2))
    interactions = dataset.interactions
    shuffled = interactions.sample(frac=1.0, random_state=0)
    split = leave_last_out(shuffled)
    assert len(split.train) + len(split.validation) + len(split.test) == len(interactions)
    test = split.test.set_index("user_id")["timestamp"]
    validation = split.validation.set_index("user_id")["timestamp"]
    train_max = split.train.groupby("user_id")["timestamp"].max()
    assert test.index.equals(validation.index) and len(test) == 200
    assert (test >= validation).all()
    assert (validation >= train_max[validation.index]).all()


def test_missing_columns_rejected() -> None:
    with pytest.raises(DataError, match=r"missing column\(s\) \['timestamp'\]"):
        leave_last_out(pd.DataFrame({"user_id": ["u"], "item_id": ["a"]}))
