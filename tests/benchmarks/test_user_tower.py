"""The user-tower benchmark (benchmarks/user_tower.py) on the test suite's trained bundles."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from benchmarks.user_tower import markdown, measure
from recsys.models.bundles import EmbeddingBundle
from tests.support.fixtures_models import TrainedModels


def test_each_bundle_is_timed_one_user_a_call(trained_models: TrainedModels) -> None:
    bundles = {alias: EmbeddingBundle.load(trained_models.refs(alias).paths["embedding"])
               for alias in ("champion", "challenger")}
    results = measure(bundles, calls=20, rounds=2)
    assert {r["user_encoder"] for r in results.values()} == {"sequence", "pooled"}
    for name, r in results.items():
        assert r["calls"] == 40 and r["history_len"] == bundles[name].history_len
        assert 0 < r["p50_us"] <= r["p99_us"]
    assert "| champion | sequence |" in markdown(results)


def test_a_bundle_without_served_users_is_refused(trained_models: TrainedModels,
                                                  tmp_path: Path) -> None:
    bundle = EmbeddingBundle.load(trained_models.refs().paths["embedding"])
    empty = dataclasses.replace(bundle, users=None)
    with pytest.raises(ValueError, match="no served users"):
        measure({"empty": empty}, calls=1, rounds=1)
