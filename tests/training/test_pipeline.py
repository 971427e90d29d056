"""The headless pipeline (training/pipeline.py) end to end into a real MLflow sqlite store, and its CLI."""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.entities import Run
from pydantic import ValidationError

from recsys.features import DENSE_FEATURES
from recsys.models import artifacts
from recsys.models.bundles import EmbeddingBundle, RankerBundle, check_compatible
from recsys.settings import ServingSettings
from registry import (
    CHALLENGER,
    CHAMPION,
    EMBEDDING_MODEL,
    FALLBACK_MODEL,
    RANKER_MODEL,
    ModelSet,
    Registry,
)
from tests.support.bundle_factory import tracking_store
from training import cli
from training.config import SEQUENCE_TOWER, EvalConfig, PipelineConfig, RankerConfig, TwoTowerConfig
from training.data import SyntheticConfig, generate_synthetic
from training.pipeline import (
    PipelineResult,
    apply_overrides,
    code_version,
    ensure_champion,
    run_pipeline,
)
from training.search_step import LOGGED
from training.settings import TrainingSettings
from training.steps import SHORT_HISTORIES, _served_until, data_fingerprint, ranker_depths

USERS, ITEMS = 150, 300
CONFIG = PipelineConfig(
    two_tower=TwoTowerConfig(dim=16, hidden=32, history_len=8),
    # two members: an ensemble goes through training, export and the registry like one model
    sequence_tower=replace(SEQUENCE_TOWER, dim=16, hidden=32, history_len=6, members=2),
    ranker=RankerConfig(retrieval_candidates=50, hard_negatives=7, random_negatives=4, hidden=32),
    evaluation=EvalConfig(candidates=50, als_factors=(8,), als_regularization=(0.1,),
                          als_iterations=5, search_seeds=(0, 1)),
)
MODELS = (EMBEDDING_MODEL, RANKER_MODEL, FALLBACK_MODEL)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _settings(store: Path, workdir: Path, epochs: int) -> TrainingSettings:
    return TrainingSettings(data_path=None, tracking_uri=None, store_dir=store, workdir=workdir,
                            epochs=epochs, ranker_epochs=1, synthetic_users=USERS,
                            synthetic_items=ITEMS, seed=0)


@dataclass(frozen=True)
class Store:
    uri: str
    root: Path
    first: PipelineResult  # into an empty store: promoted to champion
    first_workdir: Path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    root = tmp_path_factory.mktemp("pipeline")
    with tracking_store(root / "store") as uri:
        first = run_pipeline(_settings(root / "store", root / "work", epochs=2), CONFIG)
        yield Store(uri, root, first, root / "work")


@pytest.fixture(scope="module")
def second(store: Store) -> PipelineResult:
    """A second run into the same store, while a champion is registered."""
    return run_pipeline(_settings(store.root / "store", store.root / "work2", epochs=1), CONFIG,
                        promote="if-no-champion")


def _run(run_id: str) -> Run:
    return mlflow.MlflowClient().get_run(run_id)


def _two_tower_run(store: Store) -> Run:
    """The run that logged the first embedding model (version 1)."""
    [info] = [v for v in Registry(store.uri).list_versions(EMBEDDING_MODEL) if v.version == "1"]
    assert info.run_id is not None
    return _run(info.run_id)


def _child(parent_id: str, name: str) -> Run:
    [run] = mlflow.search_runs(
        experiment_names=["recsys"], output_format="list",
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and tags.mlflow.runName = '{name}'")
    return run


# --- the first run ---------------------------------------------------------------------------

def test_first_run_registers_all_three_models_as_champion(store: Store) -> None:
    assert store.first.tracking_uri == store.uri
    assert store.first.promoted
    assert store.first.model_set == ModelSet("1", "1", "1")
    registry = Registry(store.uri)
    assert registry.champion_exists()
    assert registry.resolve(CHAMPION) == store.first.model_set
    for name in MODELS:
        assert CHAMPION in next(v for v in registry.list_versions(name) if v.version == "1").aliases


def test_two_tower_run_trains_each_user_encoder_in_a_nested_run_and_keeps_the_best(
    store: Store,
) -> None:
    run = _two_tower_run(store)
    assert run.data.tags["mlflow.runName"] == "two-tower"
    scores = {name: run.data.metrics[f"val_ndcg_at_10_{name}"] for name in ("pooled", "sequence")}
    chosen = run.data.params["two_tower.chosen_user_encoder"]
    assert chosen == max(scores, key=scores.__getitem__)
    history_len = {"pooled": "8", "sequence": "6"}
    assert run.data.params["two_tower.history_len"] == history_len[chosen]
    embedding = EmbeddingBundle.load(store.first_workdir / "embedding")
    assert embedding.config["user_encoder"] == chosen  # the bundle served is the one chosen
    client = mlflow.MlflowClient()
    assert "data_summary.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    for name in ("pooled", "sequence"):
        child = _child(run.info.run_id, f"two-tower: {name} user encoder")
        params = child.data.params
        assert params["two_tower.dim"] == "16"
        assert params["two_tower.history_len"] == history_len[name]
        assert params["two_tower.epochs"] == "2"  # the settings override the config
        assert params["two_tower.seed"] == "0"
        for metric in ("two_tower_loss", "two_tower_val_hr_at_10", "two_tower_val_ndcg_at_10"):
            history = client.get_metric_history(child.info.run_id, metric)
            assert sorted(m.step for m in history) == [0, 1], metric
        losses = sorted(client.get_metric_history(child.info.run_id, "two_tower_loss"),
                        key=lambda m: m.step)
        assert losses[1].value < losses[0].value
        best = max(m.value for m in client.get_metric_history(child.info.run_id,
                                                               "two_tower_val_ndcg_at_10"))
        model = client.get_metric_history(child.info.run_id, "two_tower_model_val_ndcg_at_10")
        assert [m.value for m in model] == [pytest.approx(scores[name])]  # what is compared
        members = int(params["two_tower.members"])
        assert members == (1 if name == "pooled" else 2)
        if members == 1:  # one model: the best epoch's score
            assert best == pytest.approx(scores[name])
        for k in range(2, members + 1):  # each further member logs its own curve
            history = client.get_metric_history(child.info.run_id,
                                                f"two_tower_member{k}_val_ndcg_at_10")
            assert sorted(m.step for m in history) == [0, 1]
        assert "two_tower_curves.png" in {a.path for a in client.list_artifacts(child.info.run_id)}


def test_ranker_run_logs_ranker_and_fallback_params(store: Store) -> None:
    parent = _two_tower_run(store).data.tags["mlflow.parentRunId"]
    run = _child(parent, "ranker")
    assert run.data.params["ranker.hard_negatives"] == "7"
    assert run.data.params["ranker.epochs"] == "1"
    assert "fallback.max_iter" in run.data.params
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "ranker_loss")
    assert [m.step for m in history] == [0]
    assert 0.0 <= run.data.metrics["val_pipeline_hr_at_10"] <= 1.0


def test_the_data_fingerprint_is_the_same_for_the_same_rows_in_another_order() -> None:
    dataset = generate_synthetic(SyntheticConfig(n_users=50, n_items=80))
    shuffled = replace(dataset, interactions=dataset.interactions.sample(frac=1.0, random_state=1),
                       items=dataset.items.iloc[::-1])
    fewer = replace(dataset, interactions=dataset.interactions.iloc[1:])
    assert data_fingerprint(shuffled) == data_fingerprint(dataset) != data_fingerprint(fewer)


def test_runs_and_versions_carry_the_data_fingerprint_and_code_version(store: Store) -> None:
    expected = data_fingerprint(generate_synthetic(SyntheticConfig(n_users=USERS, n_items=ITEMS)))
    version = code_version()
    assert version
    two_tower = _two_tower_run(store)
    pipeline = _run(two_tower.data.tags["mlflow.parentRunId"])
    assert pipeline.data.tags["mlflow.runName"] == "pipeline"
    for run in (two_tower, pipeline):
        assert run.data.tags["data_fingerprint"] == expected
        assert run.data.tags["code_version"] == version
        assert run.data.tags["dataset"] == "synthetic"
    for name in MODELS:
        info = next(v for v in Registry(store.uri).list_versions(name) if v.version == "1")
        assert info.tags["data_fingerprint"] == expected
        assert info.tags["code_version"] == version


def test_evaluation_report_is_written_and_logged(store: Store) -> None:
    workdir = store.first_workdir
    payload = json.loads((workdir / "evaluation.json").read_text())
    assert set(payload["results"]) == {"retrieval", "pipeline", "pipeline_int8",
                                      "pipeline_returning", "fallback",
                                      "popularity", "als", "ease"}
    for metrics in payload["results"].values():
        assert 0.0 <= metrics["hr@10"] <= metrics["hr@50"] <= 1.0
    assert payload["data"]["users"] == USERS and payload["data"]["items"] == ITEMS
    groups = payload["by_tie"]  # the test users whose last two events share a second, apart
    assert sum(g["users"]["n"] for g in groups.values()) == payload["data"]["test_users"]
    assert set(groups) <= {"tied", "untied"} and "untied" in groups
    share = payload["diagnostics"]["tied_user_share"]
    assert share == pytest.approx(groups.get("tied", {"users": {"n": 0}})["users"]["n"]
                                  / payload["data"]["test_users"])
    n = {group: g["users"]["n"] for group, g in groups.items()}
    whole = sum(g["pipeline"]["hr@10"] * n[group] for group, g in groups.items()) / sum(n.values())
    assert whole == pytest.approx(payload["results"]["pipeline"]["hr@10"])
    curve = {(row["history"], row["model"]): row["hr@10"] for row in payload["cold_start"]}
    assert {h for h, _ in curve} == {0, 1, 3, 5, 10}
    assert curve[(0, "pipeline")] == curve[(0, "popularity")]  # the served cold-start path
    assert (0, "item_to_item") not in curve and (1, "item_to_item") in curve
    assert (workdir / "cold_start.png").read_bytes()[:4] == b"\x89PNG"
    for model, metrics in store.first.report.results.items():
        assert payload["results"][model] == pytest.approx(metrics), model
    table = (workdir / "evaluation.md").read_text()
    assert table.startswith(store.first.report.table)
    assert "| pipeline |" in table and "\n## Search\n" in table
    assert (workdir / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    pipeline_id = _two_tower_run(store).data.tags["mlflow.parentRunId"]
    evaluation = _child(pipeline_id, "evaluation")
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(evaluation.info.run_id)}
    assert {"evaluation.json", "evaluation.md", "evaluation.png", "cold_start.png",
            "search_evaluation.png"} <= logged
    assert evaluation.data.metrics["test_pipeline_hr_at_10"] == pytest.approx(
        store.first.report.results["pipeline"]["hr@10"])
    assert "pipeline_over_popularity_hr10" in evaluation.data.metrics
    timings = {a.path for a in mlflow.MlflowClient().list_artifacts(pipeline_id)}
    assert "timings.json" in timings


def test_the_report_evaluates_search_with_the_served_settings(store: Store) -> None:
    workdir = store.first_workdir
    payload = json.loads((workdir / "evaluation.json").read_text())
    search, served = payload["search"], ServingSettings.model_fields
    assert search == store.first.report.search
    assert search["chosen"] == {
        "typo_similarity": served["search_typo_similarity"].default,
        "rrf_k": served["search_rrf_k"].default, "source": "served",
        "weights": {"vector": served["search_vector_weight"].default,
                    "personal": served["search_personal_weight"].default}}
    chosen = json.loads((workdir / "embedding" / "manifest.json").read_text())
    assert search["ranking"] == chosen["metadata"]["search_ranking"]["use"]  # as served
    test, users = search["test"], payload["data"]["test_users"]
    for name in LOGGED:
        hr, mrr = test[f"{name}/hr@10"], test[f"{name}/mrr@10"]
        assert 0.0 <= mrr["mean"] <= hr["mean"] <= 1.0, name
        assert hr["n"] == 2, name  # one value per query seed
    assert test["known_item_clean/queries"]["mean"] == users
    assert 0 < test["category_bm25/queries"]["mean"] <= users
    # A few title words find the held-out item among 300 far above chance (10 / 300), and one
    # typo costs some of it, not all.
    clean, typo = test["known_item_clean/hr@10"]["mean"], test["known_item_typo/hr@10"]["mean"]
    assert clean >= 0.5 and 0.5 * clean <= typo <= clean
    assert 0 < search["seconds"] < 60
    run = _child(_two_tower_run(store).data.tags["mlflow.parentRunId"], "evaluation")
    for name in LOGGED:
        assert run.data.metrics[f"search_{name}_hr_at_10"] == pytest.approx(
            test[f"{name}/hr@10"]["mean"])
    assert (workdir / "search_evaluation.png").read_bytes()[:4] == b"\x89PNG"
    report = (workdir / "evaluation.md").read_text()
    assert "| known-item, one typo |" in report and "RECSYS_SEARCH_* defaults" in report


def test_registered_embedding_holds_onnx_towers_and_faiss_index(store: Store) -> None:
    registry = Registry(store.uri)
    root = store.root / "downloaded"
    bundle = registry.download(EMBEDDING_MODEL, CHAMPION, root / "embedding")
    for name in (artifacts.USER_TOWER, artifacts.ITEM_TOWER, artifacts.ITEM_INDEX):
        assert (bundle / name).is_file(), name
    embedding = EmbeddingBundle.load(bundle)
    assert embedding.catalog.size == ITEMS
    # an ensemble's members side by side: 16 dimensions each
    assert embedding.item_vectors.shape == (ITEMS + 1, 16 * embedding.config["members"])
    assert embedding.index.n_items == ITEMS
    # the index answers an inner-product query as an exact search over the item vectors does
    queries = embedding.item_vectors[1:4]
    _, rows = embedding.index.search(queries, 1)
    exact = queries @ embedding.item_vectors[1:].T
    assert rows[:, 0].tolist() == (exact.argmax(axis=1) + 1).tolist()
    ranker = RankerBundle.load(registry.download(RANKER_MODEL, CHAMPION, root / "ranker"))
    fallback = RankerBundle.load(registry.download(FALLBACK_MODEL, CHAMPION, root / "fallback"),
                                 "fallback_ranker")
    check_compatible(embedding, ranker)
    check_compatible(embedding, fallback)


def test_the_ranker_bundle_records_the_policy_validation_chose_and_why(store: Store) -> None:
    ranker = RankerBundle.load(store.first_workdir / "ranker")
    policy, scores = ranker.policy, ranker.manifest.metadata["ranking_policy_validation"]
    assert policy.use_ranker == (scores["val_ranker_hr_at_10"] > scores["val_retrieval_hr_at_10"])
    # the depth: the best HR@10 of those tried, a tie to the fewest candidates
    by_depth = {d: scores[f"val_ranker_{d}_hr_at_10"] for d in ranker_depths(50)}
    assert list(by_depth) == [12, 25, 38, 50]  # a quarter to all of the 50 candidates
    assert scores["val_ranker_hr_at_10"] == by_depth[policy.ranked_candidates] == max(
        by_depth.values())
    assert policy.ranked_candidates == min(d for d, hr in by_depth.items()
                                           if hr == max(by_depth.values()))
    paths = ("ranker", "retrieval", "item_to_item")  # a tie goes to the longer histories' path
    hr = [{p: scores[f"val_new_{n}_{p}_hr_at_10"] for p in paths
           if f"val_new_{n}_{p}_hr_at_10" in scores} for n in SHORT_HISTORIES]
    assert all(("ranker" in h) == policy.use_ranker for h in hr)
    best = [max(h, key=lambda p, h=h: h[p]) for h in hr]
    # item-to-item up to the last length of an unbroken run of its wins from one event on,
    won = next((i for i, p in enumerate(best) if p != "item_to_item"), len(best))
    assert policy.short_history == (SHORT_HISTORIES[won - 1] if won else 0)
    # then retrieval order as long as it wins (only where the ranker is used at all)
    run = next((i for i, p in enumerate(best[won:]) if p != "retrieval"), len(best) - won)
    assert policy.retrieval_until == (SHORT_HISTORIES[won + run - 1]
                                      if run and policy.use_ranker else 0)
    for n, h in zip(SHORT_HISTORIES, hr):  # each history length takes the path that won there
        if n <= policy.short_history or n <= policy.retrieval_until:
            assert h[policy.path_for(n)] == max(h.values())
    payload = json.loads((store.first_workdir / "evaluation.json").read_text())
    gain = payload["significance"]["pipeline_vs_retrieval"]
    for metric in ("hr@10", "ndcg@10"):
        assert gain[metric]["low"] <= gain[metric]["gain"] <= gain[metric]["high"]
    ranks = np.load(store.first_workdir / "test_ranks.npz")
    assert len(ranks["pipeline"]) == len(ranks["user_ids"]) == payload["data"]["test_users"]


# --- a second run, the CLI and the settings -------------------------------------------------

def test_second_run_registers_a_challenger_and_keeps_the_champion(
    store: Store, second: PipelineResult,
) -> None:
    assert not second.promoted
    assert second.model_set == ModelSet("2", "2", "2")
    registry = Registry(store.uri)
    assert registry.resolve(CHAMPION) == store.first.model_set
    assert registry.resolve(CHALLENGER) == second.model_set


def test_cli_ensure_champion_has_nothing_to_train_for_the_champions_data(
    store: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("RECSYS_DATA_PATH", raising=False)
    monkeypatch.delenv("RECSYS_TRACKING_URI", raising=False)
    monkeypatch.setenv("RECSYS_STORE_DIR", str(store.root / "store"))
    monkeypatch.setenv("RECSYS_WORKDIR", str(store.root / "cli-work"))
    monkeypatch.setenv("RECSYS_SYNTHETIC_USERS", str(USERS))
    monkeypatch.setenv("RECSYS_SYNTHETIC_ITEMS", str(ITEMS))
    before = {name: len(Registry(store.uri).list_versions(name)) for name in MODELS}
    assert cli.main(["run", "--ensure-champion"]) == 0
    assert "nothing to train" in capsys.readouterr().out
    assert {name: len(Registry(store.uri).list_versions(name)) for name in MODELS} == before
    assert not (store.root / "cli-work").exists()


def test_switching_data_trains_for_the_new_data_and_switching_back_trains_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The main command's step when RECSYS_DATA_PATH (here: the synthetic data's seed) changes:
    a champion trained on other data is never kept; nor is one this code cannot serve."""
    store = tmp_path / "store"

    def settings(data_seed: int) -> TrainingSettings:
        return TrainingSettings(data_path=None, tracking_uri=None, store_dir=store,
                                workdir=tmp_path / f"work-{data_seed}", epochs=1,
                                ranker_epochs=1, synthetic_users=USERS, synthetic_items=ITEMS,
                                synthetic_seed=data_seed)

    with tracking_store(store) as uri:
        registry = Registry(uri)
        said = [ensure_champion(settings(0), CONFIG)]  # an empty store: trains
        first = registry.resolve(CHAMPION)
        said.append(ensure_champion(settings(7), CONFIG))  # other data: trains for it
        second = registry.resolve(CHAMPION)
        versions = {name: len(registry.list_versions(name)) for name in MODELS}
        said.append(ensure_champion(settings(0), CONFIG))  # back: the first set again
        said.append(ensure_champion(settings(0), CONFIG))
        back = registry.resolve(CHAMPION)
        assert {name: len(registry.list_versions(name)) for name in MODELS} == versions
        assert registry.ranker_features(back) == list(DENSE_FEATURES)
        # code whose ranker computes other features: no registered set can be served by it
        monkeypatch.setattr("training.pipeline.DENSE_FEATURES", (*DENSE_FEATURES, "new"))
        said.append(ensure_champion(settings(0), CONFIG))  # trains (the same models, bit for bit)

    assert said[0].startswith("Trained on 'synthetic'")
    assert said[1].startswith("The champion was trained on other data") and "Trained on" in said[1]
    assert second != first and back == first
    assert registry.data_fingerprint(second) != registry.data_fingerprint(first)
    assert "is champion again" in said[2] and "nothing to train" in said[3]
    assert said[4].startswith("The champion's ranker takes other features"), said[4]
    assert "Trained on 'synthetic'" in said[4]


def test_cli_rejects_a_missing_data_path_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RECSYS_STORE_DIR", str(tmp_path / "store"))
    assert cli.main(["run", "--data", str(tmp_path / "missing")]) == 2
    assert "RECSYS_DATA_PATH" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


def test_settings_reject_a_missing_data_path(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="RECSYS_DATA_PATH=.*does not exist"):
        TrainingSettings(data_path=tmp_path / "missing")


@pytest.mark.parametrize("field", ["epochs", "ranker_epochs", "synthetic_users",
                                   "torch_threads"])
def test_settings_reject_non_positive_counts_naming_the_setting(field: str) -> None:
    with pytest.raises(ValidationError, match=rf"(?s){field}.*must be a positive integer, got 0"):
        TrainingSettings(**{field: 0})


def test_settings_read_the_environment_and_validate_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_EPOCHS", "3")
    assert TrainingSettings().epochs == 3
    monkeypatch.setenv("RECSYS_EPOCHS", "0")
    with pytest.raises(ValidationError, match="epochs"):
        TrainingSettings()


def test_torch_threads_reach_every_model_that_trains(monkeypatch: pytest.MonkeyPatch) -> None:
    config = PipelineConfig()
    assert {config.two_tower.threads, SEQUENCE_TOWER.threads, config.ranker.threads} == {1}
    monkeypatch.setenv("RECSYS_TORCH_THREADS", "2")
    chosen = apply_overrides(config, TrainingSettings())
    assert chosen.sequence_tower is not None
    assert (chosen.two_tower.threads, chosen.sequence_tower.threads, chosen.ranker.threads) == \
        (2, 2, 2)
    unset = apply_overrides(config, TrainingSettings(torch_threads=None))
    assert unset.two_tower.threads == unset.ranker.threads == 1  # the configs' own count


def test_run_pipeline_rejects_an_unknown_promotion_policy(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="promote='sometimes'"):
        run_pipeline(_settings(tmp_path / "store", tmp_path / "work", 1), CONFIG,
                     promote="sometimes")


@pytest.mark.parametrize(("best", "item_to_item", "retrieval"), [
    (["item_to_item", "item_to_item", "retrieval", "retrieval", "ranker"], 2, 5),
    (["retrieval", "item_to_item", "retrieval", "ranker", "retrieval"], 0, 1),
    (["ranker"] * 5, 0, 0),
    (["item_to_item"] * 5, 10, 0),
    (["retrieval"] * 4 + ["ranker"], 0, 5),
])
def test_each_short_history_path_is_served_up_to_the_end_of_its_unbroken_run_of_wins(
        best: list[str], item_to_item: int, retrieval: int) -> None:
    assert _served_until(best, "item_to_item") == item_to_item
    assert _served_until(best, "retrieval", after=item_to_item) == retrieval
