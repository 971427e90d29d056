"""The evaluation over seeds (training/seeds.py): intervals, the paired gain and the summary."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.seeds import interval, seed_gain, summarise

USERS = np.array(["u1", "u2", "u3", "u4"] * 50)


def _seed(out: Path, seed: int, pipeline: np.ndarray, retrieval: np.ndarray) -> None:
    work = out / f"seed-{seed}" / "work"
    work.mkdir(parents=True)
    results = {m: {"hr@10": float((r < 10).mean()), "ndcg@10": 0.1 + seed / 100,
                   "recall@50": float((r < 50).mean())}
               for m, r in (("pipeline", pipeline), ("retrieval", retrieval))}
    curve = [{"history": n, "model": m, "hr@10": 0.05 * (n + 1) + seed / 100, "ndcg@10": 0.0}
             for n in (0, 1) for m in ("popularity", "pipeline")]
    (work / "evaluation.json").write_text(json.dumps({
        "results": results, "cold_start": curve, "embedding": {"user_encoder": "sequence"},
        "by_tie": {group: {"users": {"n": 100.0}, **results} for group in ("tied", "untied")},
        "ranking_policy": {"short_history": 1, "use_ranker": True}}))
    np.savez_compressed(work / "test_ranks.npz", user_ids=USERS, pipeline=pipeline,
                        retrieval=retrieval)
    (work / "timings.json").write_text(json.dumps({"two_tower": 60.0 + seed, "rankers": 30.0,
                                                   "evaluation": 20.0}))


def test_interval_is_the_mean_with_a_t_half_width() -> None:
    assert interval([0.2]) == {"mean": 0.2, "ci95": 0.0, "n": 1.0}
    result = interval([1.0, 2.0, 3.0])
    assert result["mean"] == 2.0 and result["ci95"] == pytest.approx(4.303 / np.sqrt(3), rel=1e-3)


def test_a_gain_on_every_seed_is_significant_and_none_is_not() -> None:
    rng = np.random.default_rng(0)
    retrieval = rng.integers(0, 40, size=len(USERS))
    better = np.maximum(retrieval - 8, 0)  # every user's item moved up
    runs = [{"pipeline": better, "retrieval": retrieval}] * 3
    gain = seed_gain(runs, "pipeline", "retrieval", resamples=500)
    assert gain["hr@10"]["gain"] > 0 and gain["hr@10"]["low"] > 0 and gain["hr@10"]["significant"]
    noise = [{"pipeline": rng.permutation(retrieval), "retrieval": retrieval} for _ in range(3)]
    assert not seed_gain(noise, "pipeline", "retrieval", resamples=500)["ndcg@10"]["significant"]


def test_summarise_reads_every_seed_and_writes_the_report(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for seed in (0, 1, 10):
        retrieval = rng.integers(0, 60, size=len(USERS))
        _seed(tmp_path, seed, np.maximum(retrieval - 5, 0), retrieval)
    summary = summarise(tmp_path)
    assert summary["seeds"] == [0, 1, 10]  # in number order, not name order
    ndcg = summary["results"]["pipeline"]["ndcg@10"]
    assert ndcg["mean"] == pytest.approx(0.1 + 11 / 300) and ndcg["n"] == 3.0
    assert set(summary["significance"]) == {"pipeline_vs_retrieval"}
    assert summary["cold_start_hr@10"]["pipeline@1"]["mean"] == pytest.approx(0.1 + 11 / 300)
    assert summary["user_encoder"] == ["sequence"] * 3
    assert summary["by_tie"]["tied"]["pipeline"]["ndcg@10"] == ndcg
    assert summary["timings_s"]["two_tower"]["mean"] == pytest.approx(60.0 + 11 / 3)
    assert "| pipeline |" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "cold_start.png").stat().st_size > 0


def test_summarise_refuses_an_empty_folder_and_seeds_on_other_users(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no seed-N/work folders"):
        summarise(tmp_path)
    ranks = np.arange(len(USERS))
    _seed(tmp_path, 0, ranks, ranks)
    _seed(tmp_path, 1, ranks, ranks)
    other = tmp_path / "seed-1" / "work" / "test_ranks.npz"
    np.savez_compressed(other, user_ids=USERS[::-1], pipeline=ranks, retrieval=ranks)
    with pytest.raises(ValueError, match="different test users"):
        summarise(tmp_path)
