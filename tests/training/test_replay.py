"""The replay's data and limits: the latest share of the events is held out of training and sent
in time order; traffic goes to 127.0.0.1 only, bounded in rate and count. (A replay against a
real service: tests/e2e/test_canary_release.py.)"""
from __future__ import annotations

import asyncio

import pandas as pd
import pytest

from recsys.errors import DataError
from training.config import PipelineConfig
from training.data import SyntheticConfig, generate_synthetic
from training.pipeline import load_prepared
from training.replay import Interaction, check_loopback, held_out, replay, replay_cut
from training.settings import TrainingSettings


def events() -> pd.DataFrame:
    return pd.DataFrame({"user_id": ["a", "b", "a", "c", "b"], "item_id": ["1", "2", "3", "4", "5"],
                         "rating": [1.0] * 5, "timestamp": [50, 10, 40, 10, 30]})


def test_the_cut_keeps_the_latest_share_in_time_order() -> None:
    training, replayed = replay_cut(events(), 0.4)

    assert sorted(training["item_id"][:2]) == ["2", "4"] and training["item_id"][2] == "5"
    assert list(replayed["item_id"]) == ["3", "1"]
    assert held_out(events(), 0.4) == [Interaction("a", "3"), Interaction("a", "1")]


def test_the_cut_is_the_same_whatever_the_row_order() -> None:
    dataset = generate_synthetic(SyntheticConfig(n_users=100, n_items=200, seed=4))
    coarse = dataset.interactions.assign(timestamp=dataset.interactions["timestamp"] // 86_400)
    once = replay_cut(coarse, 0.2)
    again = replay_cut(coarse.sample(frac=1.0, random_state=1), 0.2)
    assert coarse["timestamp"].duplicated().mean() > 0.5  # ties everywhere, also at the cut
    for a, b in zip(once, again):
        pd.testing.assert_frame_equal(a, b)


def test_nothing_held_out_is_refused_with_what_to_do() -> None:
    with pytest.raises(DataError, match="train the models with RECSYS_REPLAY_HOLDOUT"):
        held_out(events(), 0.0)
    with pytest.raises(DataError, match="holds out no interaction of 5"):
        held_out(events(), 0.01)


def test_training_never_sees_the_held_out_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_REPLAY_HOLDOUT", "0.1")
    settings = TrainingSettings(synthetic_users=60, synthetic_items=80)
    whole = generate_synthetic(SyntheticConfig(n_users=60, n_items=80, seed=0)).interactions

    prepared = load_prepared(settings, PipelineConfig())

    latest = whole["timestamp"].sort_values(kind="stable").iloc[-round(len(whole) * 0.1):]
    assert len(prepared.dataset.interactions) == len(whole) - len(latest)
    assert prepared.dataset.interactions["timestamp"].max() <= latest.min()
    assert len(held_out(whole, settings.replay_holdout)) == len(latest)


@pytest.mark.parametrize("url", ["http://10.0.0.1:3000", "http://example.com", "https://1.1.1.1"])
def test_traffic_goes_to_loopback_only(url: str) -> None:
    with pytest.raises(ValueError, match="127.0.0.1 only"):
        check_loopback(url)
    assert check_loopback("http://127.0.0.1:3000/") == "http://127.0.0.1:3000"
    assert check_loopback("http://localhost:3000") == "http://localhost:3000"


@pytest.mark.parametrize("rate, count", [(0, 10), (5000, 10), (10, 0), (10, 10**7)])
def test_rate_and_count_are_bounded(rate: float, count: int) -> None:
    with pytest.raises(ValueError, match="rate must be in"):
        asyncio.run(replay("http://127.0.0.1:9", [Interaction("a", "1")], rate=rate,
                           count=count, progress=False))


def test_an_unreachable_service_counts_as_failed_requests() -> None:
    report = asyncio.run(replay("http://127.0.0.1:9", [Interaction("a", "1")], rate=100, count=3,
                                progress=False, timeout_s=1))

    assert (report.sent, report.failed, report.requests) == (3, 3, {})
    assert sum(report.statuses.values()) == 3
