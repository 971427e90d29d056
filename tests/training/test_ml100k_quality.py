"""The headline result on MovieLens 100K, kept short: a few epochs, the steps without MLflow."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from training.baselines import popularity_scorer
from training.config import PipelineConfig
from training.data import load_dataset
from training.evaluate import evaluate_scorer
from training.steps import evaluate_models, prepare_data, train_embedding, train_rankers

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

# With 2 two-tower epochs the margins were 3-5 % (seed 0: pipeline HR@10 0.136 against the
# thresholds 0.129 and 0.132), too thin to tell a regression from noise. With 4 they are
# >= 7 % (retrieval) and >= 27 % (popularity) over seeds 0-2, in about 50 s on 2 busy cores.
# The ranker trains its default 8 epochs: with 2, one that ranks users back after a month away
# below popularity (unknown_gap_share 0) kept its first epoch and passed the test below.
TWO_TOWER_EPOCHS = 4



@pytest.fixture(scope="module")
def results(ml100k_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, float]]:
    defaults = PipelineConfig()
    config = replace(defaults, two_tower=replace(defaults.two_tower, epochs=TWO_TOWER_EPOCHS))
    workdir = tmp_path_factory.mktemp("ml100k")
    data = prepare_data(load_dataset(ml100k_path), config.two_tower)
    embedding = train_embedding(data, config.two_tower, workdir / "embedding")
    rankers = train_rankers(data, embedding, config.ranker, config.fallback, workdir / "ranker",
                            workdir / "fallback_ranker", config.evaluation)
    # ALS is left out: it costs time and is not part of what this test protects
    out = evaluate_models(data, embedding, rankers, config.evaluation, baselines=False)
    out["popularity"] = evaluate_scorer(popularity_scorer(data.catalog.served_popularity), data.test,
                                        config.evaluation.cutoffs)
    return out


def test_pipeline_beats_popularity_by_half_again(results: dict[str, dict[str, float]]) -> None:
    assert results["pipeline"]["hr@10"] > 1.5 * results["popularity"]["hr@10"], results


def test_ranking_keeps_most_of_the_retrieval_quality(results: dict[str, dict[str, float]]) -> None:
    assert results["pipeline"]["hr@10"] > 0.9 * results["retrieval"]["hr@10"], results


def test_the_int8_ranker_that_cpu_serving_uses_keeps_the_quality(
        results: dict[str, dict[str, float]]) -> None:
    assert "pipeline_int8" in results, sorted(results)  # training wrote and evaluated it
    assert results["pipeline_int8"]["hr@10"] >= 0.95 * results["pipeline"]["hr@10"], results


def test_users_back_after_a_month_away_keep_the_rankers_quality(
        results: dict[str, dict[str, float]]) -> None:
    """The time since their last event unknown (the 30-day cap): how every user of an old
    snapshot is served. A ranker that learnt that value from the few training queries with so long
    a gap ranked them below popularity (README, Offline evaluation)."""
    assert results["pipeline_returning"]["hr@10"] > 0.9 * results["retrieval"]["hr@10"], results
