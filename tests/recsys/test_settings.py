"""Serving settings reject bad values with messages naming them."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from recsys.settings import ServingSettings


@pytest.fixture(autouse=True)
def no_recsys_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read RECSYS_* variables: none from the developer's shell may leak in."""
    for name in [n for n in os.environ if n.startswith("RECSYS_")]:
        monkeypatch.delenv(name)


def test_defaults_are_consistent() -> None:
    settings = ServingSettings()
    assert settings.topology == "inline" and settings.redis_url is None
    assert settings.tower_timeout_ms + settings.retrieval_timeout_ms + \
        settings.ranking_timeout_ms <= settings.budget_ms
    assert settings.faults == ""


def test_ranked_candidates_above_what_retrieval_returns_is_rejected() -> None:
    with pytest.raises(ValidationError, match="RECSYS_RANKED_CANDIDATES=500 exceeds"):
        ServingSettings(ann_candidates=200, popular_candidates=50, item_to_item_seeds=5,
                        item_to_item_per_seed=40, ranked_candidates=500)
    # Exactly what retrieval can return is fine.
    assert ServingSettings(ann_candidates=200, popular_candidates=50, item_to_item_seeds=5,
                           item_to_item_per_seed=40, ranked_candidates=450).ranked_candidates == 450


def test_stage_timeouts_above_the_budget_are_rejected() -> None:
    with pytest.raises(ValidationError) as caught:
        ServingSettings(budget_ms=100, tower_timeout_ms=20, retrieval_timeout_ms=30,
                        ranking_timeout_ms=60)
    message = str(caught.value)
    assert "RECSYS_TOWER_TIMEOUT_MS + RECSYS_RETRIEVAL_TIMEOUT_MS + RECSYS_RANKING_TIMEOUT_MS" \
        in message
    assert "(20.0 + 30.0 + 60.0)" in message and "RECSYS_BUDGET_MS=100.0" in message
    assert ServingSettings(budget_ms=110, tower_timeout_ms=20, retrieval_timeout_ms=30,
                           ranking_timeout_ms=60)


def test_the_tower_timeout_is_a_setting_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_TOWER_TIMEOUT_MS", "12.5")
    settings = ServingSettings()
    assert settings.tower_timeout_ms == 12.5 and settings.retrieval_timeout_ms == 30.0


@pytest.mark.parametrize("field, value", [
    ("budget_ms", 0), ("max_k", 0), ("diversity", 1.5), ("shadow_fraction", -0.1),
    ("topology", "cluster"), ("redis_timeout_ms", -1), ("workers", 0), ("degraded_ttl_s", -1),
    ("tower_timeout_ms", 0), ("max_body_bytes", 0), ("max_concurrency", 0),
    ("request_timeout_s", 0),
])
def test_out_of_range_values_name_the_setting(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        ServingSettings(**{field: value})
    [error] = caught.value.errors()
    assert error["loc"] == (field,)
    assert field in str(caught.value)


def test_settings_are_frozen() -> None:
    settings = ServingSettings()
    with pytest.raises(ValidationError, match="frozen"):
        settings.max_k = 5  # type: ignore[misc]


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RECSYS_MAX_K", "25")
    monkeypatch.setenv("RECSYS_DIVERSITY", "0.3")
    monkeypatch.setenv("RECSYS_REDIS_URL", "redis://127.0.0.1:6399/0")
    monkeypatch.setenv("RECSYS_FAULTS", "ranker:error")
    monkeypatch.setenv("RECSYS_MODELS_FILE", "~/models.json")
    monkeypatch.setenv("RECSYS_EXPERIMENT_FILE", str(tmp_path / "experiments.json"))
    monkeypatch.setenv("MAX_K", "99")  # no prefix: not ours
    settings = ServingSettings()
    assert settings.max_k == 25 and settings.diversity == 0.3
    assert settings.redis_url == "redis://127.0.0.1:6399/0"
    assert settings.faults == "ranker:error"
    assert settings.models_file == Path("~/models.json").expanduser()
    assert settings.experiment_file == tmp_path / "experiments.json"


def test_keyword_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_MAX_K", "25")
    assert ServingSettings(max_k=7).max_k == 7


def test_bad_environment_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_BUDGET_MS", "fast")
    with pytest.raises(ValidationError, match="budget_ms"):
        ServingSettings()
    monkeypatch.setenv("RECSYS_BUDGET_MS", "20")
    with pytest.raises(ValidationError, match="RECSYS_BUDGET_MS=20.0"):
        ServingSettings()  # the default stage timeouts (30 + 30 + 60 ms) no longer fit


def test_the_precomputed_tier_is_off_by_default_and_needs_redis() -> None:
    assert ServingSettings().precomputed_tier is False
    assert ServingSettings(precomputed_tier=True, redis_url="redis://h:6379/0").precomputed_tier
    with pytest.raises(ValidationError, match="RECSYS_PRECOMPUTED_TIER=true needs"):
        ServingSettings(precomputed_tier=True)


def test_list_fields_are_the_settings_that_change_a_list() -> None:
    base = ServingSettings().list_fields()
    assert set(base) <= set(ServingSettings.model_fields)
    assert ServingSettings(diversity=0.3).list_fields() == {**base, "diversity": 0.3}
    assert ServingSettings(budget_ms=500.0).list_fields() == base  # how long, not what
