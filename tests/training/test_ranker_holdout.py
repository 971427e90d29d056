"""The events kept out of retrieval's training for the ranker (training/config.py RankerHoldout):
at most `most` a user, never more than `share` of the user's events, the same rule in the item
statistics, both user encoders' examples and the ranker's queries."""
from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from training.config import NO_HOLDOUT, RankerConfig, RankerHoldout, TwoTowerConfig
from training.data import SyntheticConfig, generate_synthetic
from training.ranker import build_queries
from training.sequence_tower import sequence_windows
from training.sequences import UserSequences
from training.steps import prepare_data, without_last_events
from training.two_tower import build_model, encode_items, encode_users, next_item_examples


def test_the_share_caps_short_histories_and_never_binds_on_long_ones() -> None:
    holdout = RankerHoldout(most=5, share=0.5)
    np.testing.assert_array_equal(holdout.events([0, 1, 2, 3, 7, 9, 10, 11, 18, 400]),
                                  [0, 0, 1, 1, 3, 4, 5, 5, 5, 5])
    assert int(holdout.events(4)) == 2
    assert int(RankerHoldout(most=5).events(3)) == 3  # no share: every event of a short user
    assert int(NO_HOLDOUT.events(12)) == 0
    assert TwoTowerConfig().ranker_holdout == RankerHoldout(5, 0.5)


def test_a_bundle_from_before_the_share_kept_out_every_users_last_events() -> None:
    assert RankerHoldout.of({"ranker_holdout_events": 5}) == RankerHoldout(5, 1.0)
    assert RankerHoldout.of({"ranker_holdout_events": 3, "ranker_holdout_share": 0.25}) \
        == RankerHoldout(3, 0.25)


def test_without_last_events_keeps_each_users_share() -> None:
    events = pd.DataFrame({
        "user_id": ["long"] * 12 + ["short"] * 3 + ["single"],
        "item_id": [f"i{n}" for n in range(16)],
        "timestamp": [*range(12), *range(3), 0],
    })
    kept = without_last_events(events.sample(frac=1.0, random_state=0), RankerHoldout(5, 0.5))
    counts = kept.groupby("user_id").size().to_dict()
    assert counts == {"long": 7, "short": 2, "single": 1}
    assert set(kept[kept.user_id == "short"].item_id) == {"i12", "i13"}  # the earliest two


def test_examples_windows_and_queries_split_each_user_at_the_same_event() -> None:
    sequences = UserSequences(["long", "short"], [np.arange(1, 13), np.array([20, 21, 22])],
                              [np.arange(12), np.arange(3)])
    attributes = np.array([[1], [2]])
    holdout = RankerHoldout(5, 0.5)
    examples = next_item_examples(sequences, attributes, history_len=4, holdout=holdout)
    # long: 12 events, 5 kept out, targets 2..7; short: 3 events, 1 kept out, target 21
    assert sorted(examples.target.tolist()) == [*range(2, 8), 21]
    windows = sequence_windows(sequences, attributes, length=4, holdout=holdout)
    assert sorted(windows.target_rows().tolist()) == [*range(2, 8), 21]
    # the old rule (no share) left the short user nothing to train retrieval with
    assert 21 not in next_item_examples(sequences, attributes, 4, RankerHoldout(5)).target

    config = TwoTowerConfig(dim=8, hidden=16, history_len=4)
    data = prepare_data(generate_synthetic(SyntheticConfig(n_users=30, n_items=60)), config)
    model = build_model(data.catalog, data.attributes.cardinalities(), config)
    rows = [seq % (data.catalog.size - 1) + 1 for seq in sequences.sequences]
    queries = build_queries(UserSequences(sequences.user_ids, rows, sequences.timestamps),
                            data.train_attributes[:2], data.catalog,
                            encode_items(model, data.catalog),
                            functools.partial(encode_users, model), config.history_len, holdout,
                            RankerConfig(retrieval_candidates=10, hard_negatives=2,
                                         random_negatives=1))
    # the ranker's queries are exactly the events retrieval did not train on: 5 + 1
    assert len(queries.candidates) == 6
    np.testing.assert_array_equal(queries.candidates[:, 0], [*rows[0][7:], rows[1][2]])
