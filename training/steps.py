"""The training steps, each a plain function: notebooks and the headless pipeline both call these."""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from recsys.context import Context
from recsys.features import (
    FeatureScaler,
    ItemCatalog,
    UserAttributeEncoder,
    encode_history,
    user_ranker_inputs,
)
from recsys.models.artifacts import UserHistories
from recsys.models.bundles import EmbeddingBundle, RankerBundle
from recsys.models.policy import RankingPolicy
from training.baselines import popularity_scorer, tuned_als, tuned_ease
from training.bundles import write_embedding_bundle, write_fallback_bundle, write_ranker_bundle
from training.catalog import build_attribute_encoder, build_catalog, user_attribute_matrix
from training.config import (
    EvalConfig,
    FallbackConfig,
    RankerConfig,
    RankerHoldout,
    TwoTowerConfig,
)
from training.data import Dataset, leave_last_out
from training.data.order import time_ordered
from training.data.schema import USER_ID
from training.evaluate import (
    CatalogueScorer,
    EvalSet,
    as_new_users,
    evaluate_scorer,
    item_to_item,
    make_eval_set,
    ranking_metrics,
    rerank_scorer,
    scorer_ranks,
)
from training.fallback import train_fallback
from training.index_tuning import recall_at_k
from training.ranker import DCNRanker, build_queries, train_ranker
from training.ranker import score as score_torch
from training.sequence_tower import Windows
from training.sequences import UserSequences, build_sequences, concat_sequences
from training.threads import torch_threads
from training.two_tower import (
    Examples,
    TwoTowerModel,
    build_model,
    encode_items,
    encode_users,
    join,
    load_model_state,
    model_state,
    train_two_tower,
    training_examples,
)

MetricLogger = Callable[[dict[str, float], int], None]  # (metrics, step) -> None


@dataclass(frozen=True)
class PreparedData:
    """A dataset split in time and encoded for the models."""

    dataset: Dataset
    catalog: ItemCatalog
    attributes: UserAttributeEncoder
    train: UserSequences
    train_attributes: np.ndarray  # [U, A], aligned with train.user_ids
    validation: EvalSet  # history: train events; held out: each user's second-to-last event
    test: EvalSet  # history: train + validation events; held out: each user's last event
    fingerprint: str

    def eval_attributes(self, eval_set: EvalSet) -> np.ndarray:
        return user_attribute_matrix(self.dataset, self.attributes, eval_set.user_ids)

    def summary(self) -> dict[str, int | str]:
        return {"dataset": self.dataset.name, "users": len(self.train.user_ids),
                "items": self.catalog.size, "interactions": len(self.dataset.interactions),
                "validation_users": len(self.validation.user_ids),
                "test_users": len(self.test.user_ids), "fingerprint": self.fingerprint}


def data_fingerprint(dataset: Dataset) -> str:
    """sha256 (first 16 hex) over the interaction and item tables' content: their rows' hashes
    sorted, so the same data in another row order (a re-sorted file) has the same fingerprint."""
    digest = hashlib.sha256()
    for frame in (dataset.interactions, dataset.items):
        rows = pd.util.hash_pandas_object(frame, index=False).to_numpy()
        digest.update(np.sort(rows).tobytes())
    return digest.hexdigest()[:16]


def without_last_events(events: pd.DataFrame, holdout: RankerHoldout) -> pd.DataFrame:
    """`events` minus each user's last events that `holdout` keeps out (in the one time order,
    training/data/order.py)."""
    ordered = time_ordered(events)
    users = ordered.groupby(USER_ID)
    kept_out = holdout.events(users[USER_ID].transform("size").to_numpy())
    return ordered[users.cumcount(ascending=False).to_numpy() >= kept_out]


def prepare_data(dataset: Dataset, config: TwoTowerConfig) -> PreparedData:
    split = leave_last_out(dataset.interactions)
    # Item statistics (popularity, novelty) come from the events before the ranker's held-out
    # queries, so a ranker training positive never counts itself: no leak into its features.
    # The popular order the service shows counts every training event.
    history = without_last_events(split.train, config.ranker_holdout)
    catalog = build_catalog(dataset, history, config.title_buckets, config.title_tokens,
                            served=split.train)
    rows = catalog.index_lookup()
    train = build_sequences(split.train, rows)
    validation = build_sequences(split.validation, rows)
    test = build_sequences(split.test, rows)
    encoder = build_attribute_encoder(dataset)
    return PreparedData(
        dataset=dataset, catalog=catalog, attributes=encoder, train=train,
        train_attributes=user_attribute_matrix(dataset, encoder, train.user_ids),
        validation=make_eval_set(train, validation),
        test=make_eval_set(concat_sequences(train, validation), test),
        fingerprint=data_fingerprint(dataset),
    )


def padded_histories(eval_set: EvalSet, length: int) -> np.ndarray:
    return np.stack([encode_history(s, length) for s in eval_set.histories.sequences])


def served_histories(data: PreparedData, length: int) -> UserHistories:
    """Every known user's recent and seen items over all events: the serving-time snapshot."""
    everything = build_sequences(data.dataset.interactions, data.catalog.index_lookup())
    seen = [np.unique(s) for s in everything.sequences]
    return UserHistories(
        user_ids=np.asarray(everything.user_ids, dtype=np.str_),
        histories=np.stack([encode_history(s, length) for s in everything.sequences]),
        attributes=user_attribute_matrix(data.dataset, data.attributes, everything.user_ids),
        seen_indptr=np.concatenate([[0], np.cumsum([len(s) for s in seen])]).astype(np.int64),
        seen_items=np.concatenate(seen).astype(np.int64) if seen else np.zeros(0, np.int64),
        last_event_times=np.array([t[-1] for t in everything.timestamps], dtype=np.float64),
    )


def train_embedding(data: PreparedData, config: TwoTowerConfig, bundle_dir: Path,
                    log: MetricLogger | None = None) -> EmbeddingBundle:
    """Train the two-tower model (validation HR@10 after each epoch), write and load its bundle."""
    with torch_threads(config.threads):
        return _train_embedding(data, config, bundle_dir, log)


def _train_embedding(data: PreparedData, config: TwoTowerConfig, bundle_dir: Path,
                     log: MetricLogger | None) -> EmbeddingBundle:
    model, examples, _ = fit_embedding(data, config, log)
    sample = slice(0, min(256, len(examples.target)))
    write_embedding_bundle(
        bundle_dir, model, data.catalog, data.attributes, encode_items(model, data.catalog),
        examples.history[sample], examples.attributes[sample],
        {"data_fingerprint": data.fingerprint, "dataset": data.dataset.name},
        user_histories=served_histories(data, config.history_len),
    )
    return EmbeddingBundle.load(bundle_dir)


def fit_embedding(data: PreparedData, config: TwoTowerConfig, log: MetricLogger | None = None,
                  ) -> tuple[TwoTowerModel, Examples | Windows, float]:
    """Train the two-tower model, validation HR@10 and NDCG@10 after each epoch, stopping after
    `patience` epochs without a better NDCG@10; with `config.members` > 1 that many, each with its
    own seed, joined side by side. Returns the model (each member at its best epoch), what it
    trained on and its validation NDCG@10. Call within torch_threads (train_embedding does)."""
    if config.members < 1:
        raise ValueError(f"TwoTowerConfig.members must be at least 1, got {config.members}")
    examples = training_examples(data.train, data.train_attributes, config)
    validation = (padded_histories(data.validation, config.history_len),
                  data.eval_attributes(data.validation))
    fitted = [_fit_member(data, replace(config, seed=config.seed * config.members + k),
                          examples, validation, log,
                          "two_tower_" if k == 0 else f"two_tower_member{k + 1}_")
              for k in range(config.members)]
    model = join([member for member, _ in fitted])
    # one member: its best epoch's score; more: the joined model's, measured once
    ndcg = fitted[0][1] if len(fitted) == 1 else \
        _validation_metrics(data, model, validation)["ndcg@10"]
    if log is not None:
        log({"two_tower_model_val_ndcg_at_10": ndcg}, 0)
    return model, examples, ndcg


def _validation_metrics(data: PreparedData, model: TwoTowerModel,
                        validation: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """HR@10 and NDCG@10 of the model's retrieval on the validation users."""
    users = encode_users(model, *validation)
    items = encode_items(model, data.catalog)
    return evaluate_scorer(lambda p: users[p] @ items.T, data.validation, (10,))


def _fit_member(data: PreparedData, config: TwoTowerConfig, examples: Examples | Windows,
                validation: tuple[np.ndarray, np.ndarray], log: MetricLogger | None,
                prefix: str) -> tuple[TwoTowerModel, float]:
    """One model at its best epoch by validation NDCG@10, and that NDCG@10."""
    model = build_model(data.catalog, data.attributes.cardinalities(), config)
    best: dict[str, Any] = {"ndcg": -1.0}

    def on_epoch_end(epoch: int, stats: dict[str, float]) -> bool:
        metrics = _validation_metrics(data, model, validation)
        stats["val_hr_at_10"] = metrics["hr@10"]
        stats["val_ndcg_at_10"] = metrics["ndcg@10"]
        if metrics["ndcg@10"] > best["ndcg"]:  # keep the best epoch by validation NDCG@10
            best.update(ndcg=metrics["ndcg@10"], epoch=epoch, state=model_state(model))
        if log is not None:
            log({f"{prefix}{k}": v for k, v in stats.items()}, epoch)
        return epoch - best["epoch"] >= config.patience  # early stopping

    train_two_tower(model, data.catalog, examples, on_epoch_end)
    load_model_state(model, best["state"])
    if log is not None:
        log({f"{prefix}best_epoch": float(best["epoch"] + 1)}, 0)
    return model, float(best["ndcg"])


@dataclass(frozen=True)
class Rankers:
    ranker: RankerBundle
    fallback: RankerBundle
    ranker_int8: RankerBundle | None = None  # what CPU serving scores with, when there is one

    @classmethod
    def load(cls, ranker_dir: Path, fallback_dir: Path) -> Rankers:
        ranker = RankerBundle.load(ranker_dir)  # verifies every file, the int8 one included
        int8 = RankerBundle.load(ranker_dir, int8=True, verify=False)
        return cls(ranker, RankerBundle.load(fallback_dir, "fallback_ranker"),
                   int8 if int8.precision == "int8" else None)


def train_rankers(data: PreparedData, embedding: EmbeddingBundle, ranker_config: RankerConfig,
                  fallback_config: FallbackConfig, ranker_dir: Path, fallback_dir: Path,
                  eval_config: EvalConfig, log: MetricLogger | None = None) -> Rankers:
    """Train the DCN ranker and the fallback on candidates retrieved by the exported user tower."""
    with torch_threads(ranker_config.threads):
        return _train_rankers(data, embedding, ranker_config, fallback_config, ranker_dir,
                              fallback_dir, eval_config, log)


def _train_rankers(data: PreparedData, embedding: EmbeddingBundle, ranker_config: RankerConfig,
                   fallback_config: FallbackConfig, ranker_dir: Path, fallback_dir: Path,
                   eval_config: EvalConfig, log: MetricLogger | None) -> Rankers:
    queries = build_queries(data.train, data.train_attributes, data.catalog,
                            embedding.item_vectors, embedding.encode_users,
                            embedding.history_len,
                            RankerHoldout.of(embedding.config), ranker_config)

    def on_epoch_end(epoch: int, stats: dict[str, float]) -> None:
        if log is not None:
            log({f"ranker_{k}": v for k, v in stats.items()}, epoch)

    validation = EvalUsers(data, embedding, data.validation)
    size = min(eval_config.candidates, data.catalog.size)

    def validate(model: DCNRanker, scaler: FeatureScaler) -> float:
        scorer = validation.reranked(TorchScorer(model, scaler), size)
        return evaluate_scorer(scorer, data.validation, (10,))["hr@10"]

    model, scaler = train_ranker(queries, embedding.item_vectors, ranker_config, on_epoch_end,
                                 validate, float(embedding.config["temperature"]))
    policy, chosen_on = choose_policy(data, validation, TorchScorer(model, scaler), size)
    if log is not None:
        log(chosen_on, 0)
    inputs = queries.inputs(embedding.item_vectors, scaler)
    fallback = train_fallback(inputs, fallback_config)
    sample = inputs[: min(64, len(inputs))].reshape(-1, inputs.shape[-1])
    meta = {"data_fingerprint": data.fingerprint, "dataset": data.dataset.name}
    write_ranker_bundle(ranker_dir, model, scaler, ranker_config, sample, embedding.fingerprint,
                        {**meta, "ranking_policy": policy.to_metadata(),
                         "ranking_policy_validation": chosen_on})
    write_fallback_bundle(fallback_dir, fallback, scaler, fallback_config, sample,
                          embedding.fingerprint, meta)
    rankers = Rankers.load(ranker_dir, fallback_dir)
    if log is not None:
        val = evaluate_models(data, embedding, rankers, eval_config, data.validation,
                              baselines=False)
        log({f"val_{name}_hr_at_10": m["hr@10"] for name, m in val.items()}, 0)
    return rankers


SHORT_HISTORIES = (1, 2, 3, 5, 10)  # the history lengths the short-history paths are tried at
RANKER_DEPTHS = (0.25, 0.5, 0.75, 1.0)  # shares of the candidate set the ranker is tried on


def choose_policy(data: PreparedData, validation: EvalUsers, ranker: Scorer,
                  size: int) -> tuple[RankingPolicy, dict[str, float]]:
    """The served path per history length, chosen on validation (recsys/models/policy.py):
    the ranker only where it beats retrieval order (HR@10 of validation users); then, with the
    validation users' events hidden but their n most recent (as new users), item-to-item for
    the shortest histories as long as it beats both other paths, and retrieval order for the
    next ones as long as it beats the ranker. The ranker scores the first `depth` candidates
    in retrieval order, the one of RANKER_DEPTHS (shares of `size`) with the best HR@10 (a tie
    goes to the fewer, which cost less). Returns the policy and the HR@10s behind it."""
    retrieval = evaluate_scorer(validation.retrieval, data.validation, (10,))["hr@10"]
    by_depth = {depth: evaluate_scorer(validation.reranked(ranker, depth), data.validation,
                                       (10,))["hr@10"] for depth in ranker_depths(size)}
    depth = max(by_depth, key=lambda d: (by_depth[d], -d))
    ranked = by_depth[depth]
    use_ranker = ranked > retrieval
    scores = {"val_retrieval_hr_at_10": retrieval, "val_ranker_hr_at_10": ranked,
              **{f"val_ranker_{d}_hr_at_10": hr for d, hr in by_depth.items()}}
    best_paths = []
    for n in SHORT_HISTORIES:
        new = as_new_users(data.validation, n)
        users = EvalUsers(data, validation.embedding, new)
        paths = {"item_to_item": item_to_item(validation.embedding.item_vectors, new),
                 "retrieval": users.retrieval}
        if use_ranker:
            paths["ranker"] = users.reranked(ranker, depth)
        hr = {path: evaluate_scorer(scorer, new, (10,))["hr@10"] for path, scorer in paths.items()}
        scores.update({f"val_new_{n}_{path}_hr_at_10": v for path, v in hr.items()})
        # a tie goes to the path for longer histories: a short-history path has to win
        best_paths.append(max(reversed(hr), key=lambda path: hr[path]))
    short_history = _served_until(best_paths, "item_to_item")
    retrieval_until = _served_until(best_paths, "retrieval", after=short_history) \
        if use_ranker else 0
    return RankingPolicy(short_history=short_history, use_ranker=use_ranker,
                         retrieval_until=retrieval_until, ranked_candidates=depth), scores


def ranker_depths(size: int) -> list[int]:
    """The depths choose_policy tries: RANKER_DEPTHS of the `size` candidates, fewest first."""
    return sorted({max(1, round(size * share)) for share in RANKER_DEPTHS})


def _served_until(best_paths: list[str], path: str, after: int = 0) -> int:
    """The longest of SHORT_HISTORIES up to which `path` was the best at every length tried
    after `after` events (best_paths[i]: the best at SHORT_HISTORIES[i]); 0 when it lost at the
    first of them."""
    until = 0
    for n, best in zip(SHORT_HISTORIES, best_paths):
        if n <= after:
            continue
        if best != path:
            break
        until = n
    return until


class Scorer(Protocol):
    """Anything that scores ranker inputs: a RankerBundle, or a PyTorch ranker in training."""

    scaler: FeatureScaler

    def score(self, features: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class TorchScorer:
    model: DCNRanker
    scaler: FeatureScaler

    def score(self, features: np.ndarray) -> np.ndarray:
        return score_torch(self.model, features)


class EvalUsers:
    """User vectors and histories of an eval set, encoded once through the exported user tower."""

    def __init__(self, data: PreparedData, embedding: EmbeddingBundle, eval_set: EvalSet) -> None:
        self.data, self.embedding, self.eval_set = data, embedding, eval_set
        self.history = padded_histories(eval_set, embedding.history_len)
        self.users = embedding.encode_users(self.history, data.eval_attributes(eval_set))

    def retrieval(self, positions: np.ndarray) -> np.ndarray:
        return self.users[positions] @ self.embedding.item_vectors.T

    def served(self, ranker: Scorer, policy: RankingPolicy, size: int,
               returning: bool = False) -> np.ndarray:
        """[U] rank of each user's held-out item on the path `policy` gives their history (the
        ranker on the policy's depth of the `size` candidates; see `context` for `returning`)."""
        scorers = {"popularity": lambda: popularity_scorer(self.data.catalog.served_popularity),
                   "item_to_item": lambda: item_to_item(self.embedding.item_vectors,
                                                        self.eval_set),
                   "retrieval": lambda: self.retrieval,
                   "ranker": lambda: self.reranked(ranker, policy.depth(size), returning)}
        paths = np.array([policy.path_for(min(len(s), self.embedding.history_len))
                          for s in self.eval_set.histories.sequences])
        ranks = np.zeros(len(paths), dtype=np.int64)
        for path in np.unique(paths):
            mine = np.flatnonzero(paths == path)
            ranks[mine] = scorer_ranks(scorers[str(path)](), self.eval_set, users=mine)
        return ranks

    def context(self, position: int, returning: bool = False) -> Context:
        """The context of a user's held-out event: its hour, and the time since their last one;
        with `returning`, that time is unknown (the cap), as for a user back after a month or
        more away, and for every user of an old snapshot at serving time."""
        when, times = self.eval_set.timestamps[position], self.eval_set.histories.timestamps[position]
        since = float(when - times[-1]) if len(times) and not returning else None
        return Context(hour=int(when // 3600 % 24), seconds_since_last_event=since)

    def reranked(self, ranker: Scorer, size: int, returning: bool = False) -> CatalogueScorer:
        def rerank(positions: np.ndarray, candidates: np.ndarray) -> np.ndarray:
            return np.stack([
                ranker.score(user_ranker_inputs(
                    self.users[p], self.history[p], candidates[i], self.embedding.item_vectors,
                    self.data.catalog, self.context(p, returning), ranker.scaler))
                for i, p in enumerate(positions)])
        return rerank_scorer(self.retrieval, rerank, self.eval_set, size)


@dataclass(frozen=True)
class ModelRanks:
    """Per model, the [U] rank of each user's held-out item on one eval set (and the settings a
    tuned baseline chose)."""

    ranks: dict[str, np.ndarray]
    chosen: dict[str, dict[str, float]]

    def metrics(self, cutoffs: tuple[int, ...]) -> dict[str, dict[str, float]]:
        return {name: {**ranking_metrics(r, cutoffs), **self.chosen.get(name, {})}
                for name, r in self.ranks.items()}


def model_ranks(data: PreparedData, embedding: EmbeddingBundle, rankers: Rankers,
                config: EvalConfig, eval_set: EvalSet | None = None,
                baselines: bool = True) -> ModelRanks:
    """Ranks per model on `eval_set` (default: test), all through the exported ONNX models."""
    eval_set = eval_set or data.test
    users = EvalUsers(data, embedding, eval_set)
    size = min(config.candidates, data.catalog.size)
    ranks = {"retrieval": scorer_ranks(users.retrieval, eval_set)}
    chosen: dict[str, dict[str, float]] = {}
    policy = rankers.ranker.policy  # "pipeline" is what serving does: each user on their path
    ranks["pipeline"] = users.served(rankers.ranker, policy, size)
    # the same users as if back after a month or more away: how every user of an old snapshot
    # is served, and a case the held-out events' own times almost never show
    ranks["pipeline_returning"] = users.served(rankers.ranker, policy, size, returning=True)
    if rankers.ranker_int8 is not None:  # the int8 ranker that CPU serving uses
        ranks["pipeline_int8"] = users.served(rankers.ranker_int8, policy, size)
    ranks["fallback"] = scorer_ranks(users.reranked(rankers.fallback, policy.depth(size)),
                                     eval_set)
    if baselines:
        ranks["popularity"] = scorer_ranks(popularity_scorer(data.catalog.served_popularity),
                                           eval_set)
        als = tuned_als(data.validation, eval_set, data.catalog.size + 1, config.als_factors,
                        config.als_regularization, config.als_iterations)
        ranks["als"] = scorer_ranks(als.scorer, eval_set)
        chosen["als"] = {"factors": float(als.factors), "regularization": als.regularization}
        ease = tuned_ease(data.validation, eval_set, data.catalog.size + 1,
                          config.ease_regularization)
        if ease is not None:
            ranks["ease"] = scorer_ranks(ease.scorer, eval_set)
            chosen["ease"] = {"regularization": ease.regularization}
    return ModelRanks(ranks, chosen)


def evaluate_models(data: PreparedData, embedding: EmbeddingBundle, rankers: Rankers,
                    config: EvalConfig, eval_set: EvalSet | None = None,
                    baselines: bool = True) -> dict[str, dict[str, float]]:
    """Metrics per model on `eval_set` (default: test), all through the exported ONNX models."""
    return model_ranks(data, embedding, rankers, config, eval_set, baselines).metrics(
        config.cutoffs)


def pipeline_ranks(data: PreparedData, embedding: EmbeddingBundle, rankers: Rankers,
                   config: EvalConfig, eval_set: EvalSet | None = None) -> np.ndarray:
    """[U] rank of each user's held-out item under the served pipeline (each user on the path
    the ranking policy gives their history), user by user: what a paired test of two model
    sets compares."""
    eval_set = eval_set or data.test
    users = EvalUsers(data, embedding, eval_set)
    size = min(config.candidates, data.catalog.size)
    return users.served(rankers.ranker, rankers.ranker.policy, size)


def retrieval_diagnostics(data: PreparedData, embedding: EmbeddingBundle,
                          config: EvalConfig) -> dict[str, float]:
    """Candidate recall at the service's candidate-set size and ANN recall@100 vs exact search."""
    history = padded_histories(data.test, embedding.history_len)
    users = embedding.encode_users(history, data.eval_attributes(data.test))
    size = min(config.candidates, data.catalog.size)
    candidate = evaluate_scorer(lambda p: users[p] @ embedding.item_vectors.T, data.test, (size,))
    k = min(100, data.catalog.size)
    return {f"candidate_recall_at_{size}": candidate[f"hr@{size}"],
            f"index_recall_at_{k}": recall_at_k(embedding.index, embedding.item_vectors, users, k)}
