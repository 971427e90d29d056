"""The search evaluation: its queries, its grid against the served fusion, and a whole run on
the trained test models."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rapidfuzz.distance import OSA

from recsys.models.bundles import EmbeddingBundle
from recsys.search.fusion import FusionRule, Ranked
from tests.support.fixtures_models import TrainedModels
from tests.support.search_catalog import make_search_catalog
from training.data import load_dataset
from training.data.synthetic import SyntheticConfig
from training.search_eval import (
    MISSED,
    SearchEvalConfig,
    evaluate_search,
    grid_ranks,
    prepared_for,
    rank_of,
    write_report,
)
from training.search_queries import (
    category_queries,
    letters,
    title_window,
    title_words,
    with_typo,
)


def test_title_windows_are_consecutive_words_with_a_content_word() -> None:
    title = "Shawshank Redemption, The (1994)"
    assert title_words(title) == ["Shawshank", "Redemption,", "The"]
    for seed in range(30):
        window = title_window(title, np.random.default_rng(seed))
        joined = " ".join(window)
        assert 1 <= len(window) <= 3 and joined in "Shawshank Redemption, The"
        assert any(letters(w) >= 4 for w in window) and "1994" not in joined
    assert title_window("Ran (1985)", np.random.default_rng(0)) == ["Ran"]  # no such window


def test_a_typo_is_one_edit_of_one_word() -> None:
    words = ["Toy", "Story"]
    typos = {" ".join(with_typo(words, np.random.default_rng(seed))) for seed in range(40)}
    assert len(typos) > 10  # deletions, insertions, substitutions, swaps at many places
    for typo in typos:
        assert typo.split()[0] == "Toy"  # the longest word takes the edit
        assert OSA.distance(typo.lower(), "toy story") == 1, typo
    assert with_typo(["2001"], np.random.default_rng(0)) == ["2001"]  # no letters, no typo


def test_category_queries_name_a_genre_of_the_held_out_item() -> None:
    catalog = make_search_catalog()
    targets = np.arange(1, catalog.size + 1)
    for query in category_queries(catalog, targets, seed=3):
        assert catalog.genres[query.target, query.genre] > 0
        assert query.text == catalog.genre_vocab[query.genre].lower()


def test_the_grid_ranks_as_the_served_fusion_does() -> None:
    rng = np.random.default_rng(0)
    popularity = rng.integers(0, 5, 60).astype(np.float32)  # ties, broken by popularity
    rules = [FusionRule(k, {"vector": v, "personal": p})
             for k in (1.0, 5.0, 60.0) for v in (0.0, 0.3, 1.0) for p in (0.5, 2.0)]
    for _ in range(20):
        lists = {name: Ranked(rng.choice(np.arange(1, 60), size=15, replace=False),
                              np.zeros(15, np.float32)) for name in ("bm25", "vector", "personal")}
        excluded = rng.choice(np.arange(1, 60), size=5, replace=False)
        target = int(rng.integers(1, 60))
        expected = [rank_of(target, r.fuse({n: x.rows for n, x in lists.items()},
                                           popularity).rows, excluded) for r in rules]
        assert grid_ranks(lists, target, rules, popularity, excluded).tolist() == expected


def test_rank_of_an_item_no_list_holds() -> None:
    assert rank_of(9, np.asarray([1, 2, 3])) == MISSED
    assert rank_of(3, np.asarray([1, 2, 3]), np.asarray([2])) == 1


@pytest.fixture(scope="module")
def evaluated(trained_models: TrainedModels, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[dict, Path]:
    embedding = EmbeddingBundle.load(trained_models.refs("champion").paths["embedding"])
    dataset = load_dataset(None, synthetic=SyntheticConfig(n_users=150, n_items=300, seed=0))
    data = prepared_for(dataset, embedding)
    config = SearchEvalConfig(seeds=(0, 1), users=40, typo_similarity=(70.0, 90.0),
                              k=(5.0, 60.0), vector_weight=(0.0, 1.0), personal_weight=(1.0,))
    result = evaluate_search(data, embedding, config)
    out = tmp_path_factory.mktemp("search-eval")
    write_report(result, out)
    return result, out


def test_the_run_chooses_on_validation_and_reports_test(evaluated: tuple[dict, Path]) -> None:
    result, out = evaluated
    assert result["chosen"]["typo_similarity"] in (70.0, 90.0)
    assert result["chosen"]["rrf_k"] in (5.0, 60.0)
    assert len(result["validation_grid"]) == 2 * 2 * 2
    best = max(r["objective"] for r in result["validation_grid"])
    chosen = [r for r in result["validation_grid"]
              if (r["typo_similarity"], r["k"], r["vector"]) == (
                  result["chosen"]["typo_similarity"], result["chosen"]["rrf_k"],
                  result["chosen"]["weights"]["vector"])]
    assert chosen[0]["objective"] == best
    test = result["test"]
    for name in ("known_item_clean", "known_item_typo", "known_item_clean_user",
                 "category_bm25", "category_hybrid", "category_personalised"):
        assert 0.0 <= test[f"{name}/hr@10"]["mean"] <= 1.0, name
        assert test[f"{name}/mrr@10"]["mean"] <= test[f"{name}/hr@10"]["mean"]
        assert test[f"{name}/queries"]["mean"] == 40 or name.startswith("category")
    assert test["known_item_clean/hr@10"]["n"] == 2  # one value per seed
    assert json.loads((out / "search_eval.json").read_text())["chosen"] == result["chosen"]
    report = (out / "search_eval.md").read_text()
    assert "| known-item, one typo |" in report and "personalised_over_bm25_hr@10" in report


def test_data_other_than_the_bundles_is_refused(trained_models: TrainedModels) -> None:
    embedding = EmbeddingBundle.load(trained_models.refs("champion").paths["embedding"])
    other = load_dataset(None, synthetic=SyntheticConfig(n_users=150, n_items=300, seed=7))
    with pytest.raises(ValueError, match="trained on data"):
        prepared_for(other, embedding)
