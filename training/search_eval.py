"""Offline evaluation of search, on the data an embedding bundle was trained on.

(a) Known-item search: each held-out item looked for by 1-3 words of its title, clean and with
one typo (training/search_queries.py) -> HR@10 and MRR@10 of the served ranking without a user.
(b) Personalised category search: each user looks for a genre of their held-out item -> HR@10
of BM25 alone, of the hybrid (BM25 + item space, fused) and of the personalised fusion (the
user's taste as a third list). As in the recommendation evaluation, the user's known items are
left out of every ranking: the held-out item competes with items the user has not seen.

Known-item queries are asked twice: without a user, and by the user whose held-out item they
look for (the personalised fusion must not bury the title asked for under the user's taste).

The typo similarity, the fusion's k and its list weights are chosen on the validation split
(each user's second-to-last event), by the mean of three HR@10 (clean and typo queries pooled):
known-item without a user, known-item with the user, personalised category search. The test
split (each user's last event) is then reported with them through the served code
(FusionRule.fuse), as a mean with a 95% t-interval over the query seeds. The training run
reports the test split with the settings the service uses (evaluate_served: no grid).
"""
from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from recsys.models.bundles import EmbeddingBundle
from recsys.search.engine import SearchEngine, build_search_engine, chosen_search_ranking
from recsys.search.fusion import FusionRule, Ranked, personal_list
from recsys.settings import ServingSettings
from training.config import RankerHoldout, TwoTowerConfig
from training.data import Dataset
from training.evaluate import EvalSet, interval
from training.search_queries import category_queries, known_item_queries
from training.search_report import markdown
from training.sequences import UserSequences
from training.steps import PreparedData, padded_histories, prepare_data

CUTOFF = 10
MISSED = 1_000_000  # the rank of an item no list holds


@dataclass(frozen=True)
class SearchEvalConfig:
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    candidates: int = 200  # per retriever, as RECSYS_SEARCH_CANDIDATES
    typo_similarity: tuple[float, ...] = (60.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0)
    k: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0, 60.0)
    vector_weight: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0)
    personal_weight: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    users: int | None = None  # the first N users of each split (quick runs, tests)


@dataclass(frozen=True)
class Choice:
    typo_similarity: float
    rule: FusionRule


def metrics(ranks: np.ndarray) -> dict[str, float]:
    hit = ranks < CUTOFF
    return {"hr@10": float(hit.mean()) if ranks.size else 0.0,
            "mrr@10": float(np.where(hit, 1.0 / (ranks + 1.0), 0.0).mean()) if ranks.size
            else 0.0}


def retrieve(engine: SearchEngine, text: str) -> dict[str, Ranked]:
    """The lists the service fuses for a query without a user (recsys/pipeline/search.py)."""
    parsed = engine.parser.parse(text)
    allowed = engine.allowed(parsed)
    lists = {"bm25": engine.text.retrieve(parsed, allowed)}
    if parsed.understood:
        lists["vector"] = engine.vectors.retrieve(parsed, allowed)
    return lists


def rank_of(target: int, rows: np.ndarray, excluded: np.ndarray | None = None) -> int:
    if excluded is not None and excluded.size:
        rows = rows[~np.isin(rows, excluded)]
    at = np.flatnonzero(rows == target)
    return int(at[0]) if at.size else MISSED


def grid_ranks(lists: dict[str, Ranked], target: int, rules: list[FusionRule],
               popularity: np.ndarray, excluded: np.ndarray | None = None) -> np.ndarray:
    """[R] the target's rank under each rule: FusionRule.fuse for many rules at once (the
    validation grid); the test report calls FusionRule.fuse itself."""
    union = np.unique(np.concatenate([r.rows for r in lists.values()]))
    if excluded is not None and excluded.size:
        union = union[~np.isin(union, excluded)]
    at = np.searchsorted(union, target)
    if at >= union.size or union[at] != target:
        return np.full(len(rules), MISSED)
    ranks = np.full((len(lists), union.size), np.inf)
    for j, ranked in enumerate(lists.values()):
        where = np.minimum(np.searchsorted(union, ranked.rows), union.size - 1)
        present = union[where] == ranked.rows
        ranks[j, where[present]] = np.flatnonzero(present) + 1.0
    weights = np.asarray([[r.weights.get(n, 1.0) for n in lists] for r in rules])
    k = np.asarray([r.k for r in rules])
    scores = (weights[:, :, None] / (k[:, None, None] + ranks[None])).sum(axis=1)
    mine = scores[:, at:at + 1]
    earlier = (popularity[union] > popularity[target]) | (
        (popularity[union] == popularity[target]) & (union < target))
    return ((scores > mine) | ((scores == mine) & earlier[None, :])).sum(axis=1)


def user_vectors(data: PreparedData, split: EvalSet, embedding: EmbeddingBundle) -> np.ndarray:
    return embedding.encode_users(padded_histories(split, embedding.history_len),
                                  data.eval_attributes(split))


def rules_of(config: SearchEvalConfig, personal: bool) -> list[FusionRule]:
    grid = itertools.product(config.k, config.vector_weight,
                             config.personal_weight if personal else (1.0,))
    return [FusionRule(k, {"vector": v, "personal": p}) for k, v, p in grid]


def choose(data: PreparedData, embedding: EmbeddingBundle,
           config: SearchEvalConfig) -> tuple[Choice, list[dict[str, Any]]]:
    """The typo similarity and fusion rule with the best validation objective; every point of
    the grid as rows for the report. Ties go to the higher typo similarity (fewer words
    rewritten), then to the earlier point of the grid."""
    split = limited(data.validation, config.users)
    vectors = user_vectors(data, split, embedding)
    plain, full = rules_of(config, personal=False), rules_of(config, personal=True)
    engine = build_search_engine(embedding, typo_similarity=config.typo_similarity[0],
                                 candidates=config.candidates)
    category = hit_rates([grid_ranks(
        with_personal(retrieve(engine, q.text), embedding, vectors[q.user]), q.target, full,
        embedding.catalog.popularity, split.known[q.user])
        for seed in config.seeds for q in category_queries(embedding.catalog, split.targets,
                                                           seed)])
    rows = []
    for similarity in sorted(config.typo_similarity, reverse=True):
        engine = build_search_engine(embedding, typo_similarity=similarity,
                                     candidates=config.candidates)
        anonymous, personal = [], []
        for seed in config.seeds:
            for q in known_item_queries(embedding.catalog, split.targets, seed):
                for text in (q.clean, q.typo):
                    lists = retrieve(engine, text)
                    anonymous.append(grid_ranks(lists, q.target, plain,
                                                embedding.catalog.popularity))
                    personal.append(grid_ranks(with_personal(lists, embedding,
                                                             vectors[q.user]),
                                               q.target, full, embedding.catalog.popularity))
        known, known_personal = hit_rates(anonymous), hit_rates(personal)
        for j, rule in enumerate(full):
            i = plain.index(FusionRule(rule.k, {"vector": rule.weights["vector"],
                                                "personal": 1.0}))
            values = (known[i], known_personal[j], category[j])
            rows.append({"typo_similarity": similarity, "k": rule.k, **rule.weights,
                         "known_item_hr@10": values[0], "known_item_user_hr@10": values[1],
                         "personalised_hr@10": values[2], "objective": sum(values) / 3})
    best = max(rows, key=lambda r: r["objective"])  # max keeps the first of equals
    rule = FusionRule(best["k"], {"vector": best["vector"], "personal": best["personal"]})
    return Choice(best["typo_similarity"], rule), rows


def hit_rates(ranks: list[np.ndarray]) -> list[float]:
    """HR@10 under each rule, from [R] ranks per query."""
    return [float(v) for v in (np.asarray(ranks) < CUTOFF).mean(axis=0)]


def with_personal(lists: dict[str, Ranked], embedding: EmbeddingBundle,
                  user: np.ndarray) -> dict[str, Ranked]:
    return {**lists, "personal": personal_list(lists, embedding.item_vectors, user)}


def limited(split: EvalSet, users: int | None) -> EvalSet:
    if users is None:
        return split
    history = split.histories
    return EvalSet(split.user_ids[:users], split.targets[:users], split.known[:users],
                   UserSequences(history.user_ids[:users], history.sequences[:users],
                                 history.timestamps[:users]), split.timestamps[:users])


def report_test(data: PreparedData, embedding: EmbeddingBundle, config: SearchEvalConfig,
                choice: Choice) -> dict[str, Any]:
    """Per seed, with the chosen settings, through the served code: test split metrics. The
    fused lists are ordered as the service orders them: by the bundle's search ranker where
    training chose it (recsys/search/learned.py), else as fused."""
    split, popularity = limited(data.test, config.users), embedding.catalog.popularity
    vectors = user_vectors(data, split, embedding)
    engine = build_search_engine(embedding, typo_similarity=choice.typo_similarity,
                                 candidates=config.candidates)
    hybrid = FusionRule(choice.rule.k, {"vector": choice.rule.weights["vector"]})

    def served(rule: FusionRule, lists: dict[str, Ranked], text: str,
               user: np.ndarray | None) -> np.ndarray:
        fused = rule.fuse({n: r.rows for n, r in lists.items()}, popularity)
        if engine.ranker is None or not fused.rows.size:
            return fused.rows
        return engine.ranker.reorder(fused, lists, engine.parser.parse(text),
                                     embedding.item_vectors, user, popularity).rows

    per_seed: dict[str, list[float]] = {}
    for seed in config.seeds:
        found: dict[str, list[int]] = {}
        for q in known_item_queries(embedding.catalog, split.targets, seed):
            for kind, text in (("clean", q.clean), ("typo", q.typo)):
                lists = retrieve(engine, text)
                rank = rank_of(q.target, served(hybrid, lists, text, None))
                found.setdefault(f"known_item_{kind}", []).append(rank)
                found.setdefault(f"known_item_{kind}_{q.words}_words", []).append(rank)
                mine = with_personal(lists, embedding, vectors[q.user])
                found.setdefault(f"known_item_{kind}_user", []).append(rank_of(
                    q.target, served(choice.rule, mine, text, vectors[q.user])))
        for c in category_queries(embedding.catalog, split.targets, seed):
            lists = retrieve(engine, c.text)
            known = split.known[c.user]
            found.setdefault("category_bm25", []).append(rank_of(c.target, lists["bm25"].rows,
                                                                 known))
            found.setdefault("category_hybrid", []).append(
                rank_of(c.target, served(hybrid, lists, c.text, None), known))
            mine = with_personal(lists, embedding, vectors[c.user])
            found.setdefault("category_personalised", []).append(rank_of(
                c.target, served(choice.rule, mine, c.text, vectors[c.user]), known))
        for name, ranks in found.items():
            for metric, value in metrics(np.asarray(ranks)).items():
                per_seed.setdefault(f"{name}/{metric}", []).append(value)
            per_seed.setdefault(f"{name}/queries", []).append(float(len(ranks)))
        bm25, mine_hr = (metrics(np.asarray(found[f"category_{m}"]))["hr@10"]
                         for m in ("bm25", "personalised"))
        per_seed.setdefault("personalised_over_bm25_hr@10", []).append(
            mine_hr / bm25 if bm25 else float("inf"))
    return {name: interval(values) for name, values in per_seed.items()}


def evaluate_search(data: PreparedData, embedding: EmbeddingBundle,
                    config: SearchEvalConfig) -> dict[str, Any]:
    """Choose on validation, report on test; JSON-ready."""
    choice, grid = choose(data, embedding, config)
    return {"config": asdict(config), "chosen": described(choice, "validation"),
            "ranking": chosen_search_ranking(embedding),
            "validation_grid": grid, "test": report_test(data, embedding, config, choice)}


def served_choice() -> Choice:
    """The typo similarity and fusion rule the service runs with by default (its settings'
    defaults, not the environment: the training run reports what a plain deployment serves)."""
    served = {name: ServingSettings.model_fields[f"search_{name}"].default
              for name in ("typo_similarity", "rrf_k", "vector_weight", "personal_weight")}
    return Choice(served["typo_similarity"], FusionRule(served["rrf_k"], {
        "vector": served["vector_weight"], "personal": served["personal_weight"]}))


def evaluate_served(data: PreparedData, embedding: EmbeddingBundle,
                    seeds: tuple[int, ...]) -> dict[str, Any]:
    """The test split with the served settings, no validation grid (a few seconds on
    MovieLens 100K per seed): the training run's report; JSON-ready."""
    config = SearchEvalConfig(
        seeds=seeds, candidates=ServingSettings.model_fields["search_candidates"].default)
    choice = served_choice()
    return {"config": asdict(config), "chosen": described(choice, "served"),
            "ranking": chosen_search_ranking(embedding),
            "test": report_test(data, embedding, config, choice)}


def described(choice: Choice, source: str) -> dict[str, Any]:
    """source: "validation" (chosen by the grid) or "served" (the service's defaults)."""
    return {"typo_similarity": choice.typo_similarity, "rrf_k": choice.rule.k,
            "weights": dict(choice.rule.weights), "source": source}


def prepared_for(dataset: Dataset, embedding: EmbeddingBundle) -> PreparedData:
    """The dataset split as it was when `embedding` was trained; ValueError for other data."""
    names = {f.name for f in fields(TwoTowerConfig)}
    known = {k: v for k, v in embedding.config.items() if k in names}
    config = TwoTowerConfig(**{**known, "ranker_holdout_share":
                               RankerHoldout.of(embedding.config).share})
    data = prepare_data(dataset, config)
    trained_on = embedding.manifest.metadata.get("data_fingerprint")
    if trained_on is not None and trained_on != data.fingerprint:
        raise ValueError(f"{embedding.path} was trained on data {trained_on}, the data given "
                         f"is {data.fingerprint}: point RECSYS_DATA_PATH at its data")
    return data


def write_report(result: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "search_eval.json").write_text(json.dumps(result, indent=2))
    text = markdown(result)
    (out / "search_eval.md").write_text(text)
    return text
