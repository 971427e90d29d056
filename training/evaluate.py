"""Offline evaluation: leave-last-out, full-catalogue ranking with the user's known items excluded."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from recsys.features import PAD
from recsys.models.policy import item_to_item_vector
from training.sequences import UserSequences

# scores(user positions [B]) -> [B, n+1] scores over catalogue rows (row 0 is ignored)
CatalogueScorer = Callable[[np.ndarray], np.ndarray]
NEW_USER = "new:"  # a prefix no dataset user has: their attributes are unknown, as a new user's


@dataclass(frozen=True)
class EvalSet:
    """Per evaluated user: the held-out row, the rows to exclude, and the history to encode."""

    user_ids: list[str]
    targets: np.ndarray  # [U] catalogue row of the held-out event
    known: list[np.ndarray]  # rows the user already interacted with (excluded from ranking)
    histories: UserSequences  # what the models may use as the user's history, time-ordered
    timestamps: np.ndarray  # [U] time of the held-out event (for context features)


def make_eval_set(history: UserSequences, held_out: UserSequences) -> EvalSet:
    """Users with exactly one held-out event whose item is in the catalogue and who have history."""
    pos = history.position()
    users, targets, known, seqs, times, when = [], [], [], [], [], []
    for user, seq, ts in zip(held_out.user_ids, held_out.sequences, held_out.timestamps):
        j = pos.get(user)
        if len(seq) == 0 or j is None or len(history.sequences[j]) == 0:
            continue
        users.append(user)
        targets.append(int(seq[-1]))
        known.append(np.unique(history.sequences[j]))
        seqs.append(history.sequences[j])
        times.append(history.timestamps[j])
        when.append(int(ts[-1]))
    return EvalSet(users, np.asarray(targets, dtype=np.int64), known,
                   UserSequences(users, seqs, times), np.asarray(when, dtype=np.int64))


def mask_known(scores: np.ndarray, known: Sequence[np.ndarray]) -> np.ndarray:
    scores = np.array(scores, dtype=np.result_type(scores.dtype, np.float32), copy=True)
    scores[:, PAD] = -np.inf
    for i, rows in enumerate(known):
        scores[i, rows] = -np.inf
    return scores


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target among the finite scores (ties count against the target)."""
    target_scores = scores[np.arange(len(targets)), targets]
    return (scores >= target_scores[:, None]).sum(axis=1) - 1


def ranking_metrics(ranks: np.ndarray, cutoffs: Sequence[int]) -> dict[str, float]:
    """HR@k and NDCG@k for each cutoff and Recall@k (= HR@k with one held-out item)."""
    out: dict[str, float] = {}
    for k in cutoffs:
        hit = ranks < k
        out[f"hr@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
        out[f"recall@{k}"] = float(hit.mean())
    return out


def scorer_ranks(scorer: CatalogueScorer, eval_set: EvalSet, batch_size: int = 256,
                 users: np.ndarray | None = None) -> np.ndarray:
    """[U] 0-based rank of each user's held-out item under `scorer` (known items excluded); with
    `users` (positions in eval_set), theirs only, in that order."""
    users = np.arange(len(eval_set.targets)) if users is None else users
    ranks = [np.zeros(0, dtype=np.int64)]
    for start in range(0, len(users), batch_size):
        positions = users[start:start + batch_size]
        scores = mask_known(scorer(positions), [eval_set.known[i] for i in positions])
        ranks.append(target_ranks(scores, eval_set.targets[positions]))
    return np.concatenate(ranks)


def per_user_metrics(ranks: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """[U] HR@k and NDCG@k of each user: the paired samples a significance test compares."""
    hit = ranks < k
    return {f"hr@{k}": hit.astype(np.float64),
            f"ndcg@{k}": np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)}


def paired_gain(ranks: np.ndarray, baseline: np.ndarray, k: int = 10, resamples: int = 2000,
                seed: int = 0) -> dict[str, dict[str, float]]:
    """Mean per-user gain of `ranks` over `baseline` on HR@k and NDCG@k with a 95% paired
    bootstrap interval over users (scipy.stats.bootstrap, BCa): significant when it excludes 0."""
    ours, theirs = per_user_metrics(ranks, k), per_user_metrics(baseline, k)
    out: dict[str, dict[str, float]] = {}
    for metric in ours:
        gain = ours[metric] - theirs[metric]
        if not gain.any():  # identical lists: the interval is the point 0
            out[metric] = {"gain": 0.0, "low": 0.0, "high": 0.0, "significant": 0.0}
            continue
        out[metric] = mean_gain_interval(gain, resamples, seed)
    return out


BOOTSTRAP_CHUNK = 2_000_000  # values a bootstrap or jackknife batch holds at once


def mean_gain_interval(gain: np.ndarray, resamples: int = 2000,
                       seed: int = 0) -> dict[str, float]:
    """The mean of per-user `gain` with its 95% bootstrap interval (scipy.stats.bootstrap,
    BCa): significant when it excludes 0. In batches: BCa's jackknife is an [n, n - 1] array at
    once otherwise (870 MB at 6,040 users, 7.1 GB at 20,000; the same interval either way)."""
    from scipy.stats import bootstrap

    ci = bootstrap((gain,), np.mean, n_resamples=resamples, confidence_level=0.95,
                   random_state=seed, method="BCa",
                   batch=max(1, BOOTSTRAP_CHUNK // max(1, len(gain)))).confidence_interval
    return {"gain": float(gain.mean()), "low": float(ci.low), "high": float(ci.high),
            "significant": float(ci.low > 0 or ci.high < 0)}


def evaluate_scorer(scorer: CatalogueScorer, eval_set: EvalSet, cutoffs: Sequence[int],
                    batch_size: int = 256) -> dict[str, float]:
    return ranking_metrics(scorer_ranks(scorer, eval_set, batch_size), cutoffs)


def as_new_users(eval_set: EvalSet, n: int) -> EvalSet:
    """`eval_set` with each user's n most recent items visible (and excluded from ranking, as a
    service excludes what it saw), the rest hidden, the users renamed as new ones."""
    users = [NEW_USER + user for user in eval_set.user_ids]
    sequences = [s[len(s) - n:] if n else s[:0] for s in eval_set.histories.sequences]
    times = [t[len(t) - n:] if n else t[:0] for t in eval_set.histories.timestamps]
    return EvalSet(users, eval_set.targets, [np.unique(s) for s in sequences],
                   UserSequences(users, sequences, times), eval_set.timestamps)


def item_to_item(item_vectors: np.ndarray, eval_set: EvalSet) -> CatalogueScorer:
    """Each item's mean similarity (item vectors) to the user's visible items: the served
    item-to-item path's order (recsys/models/policy.py)."""
    def score(positions: np.ndarray) -> np.ndarray:
        means = np.stack([item_to_item_vector(item_vectors, eval_set.histories.sequences[p])
                          for p in positions])
        return means @ item_vectors.T
    return score


def tied_to_history(eval_set: EvalSet) -> np.ndarray:
    """[U] whether the held-out event shares its timestamp with the last event of the user's
    history: the users whose last events fall in the same second, where the order of those
    events is the split's tie rule rather than time (training/data/order.py)."""
    return np.array([len(times) > 0 and times[-1] == when for times, when in
                     zip(eval_set.histories.timestamps, eval_set.timestamps)], dtype=bool)


def metrics_by_group(ranks: dict[str, np.ndarray], groups: dict[str, np.ndarray],
                     cutoffs: Sequence[int]) -> dict[str, dict[str, dict[str, float]]]:
    """{group: {model: metrics over the group's users}} ({"users": n} for every group)."""
    return {group: {"users": {"n": float(mask.sum())},
                    **{name: ranking_metrics(r[mask], cutoffs) for name, r in ranks.items()}}
            for group, mask in groups.items() if mask.any()}


def candidate_recall(scorer: CatalogueScorer, eval_set: EvalSet, size: int,
                     batch_size: int = 256) -> float:
    """Share of held-out items found among the top-`size` candidates of `scorer`."""
    metrics = evaluate_scorer(scorer, eval_set, (size,), batch_size)
    return metrics[f"hr@{size}"]


def rerank_scorer(retrieval: CatalogueScorer, rerank: Callable[[np.ndarray, np.ndarray], np.ndarray],
                  eval_set: EvalSet, candidates: int) -> CatalogueScorer:
    """Top-`candidates` by retrieval, reordered by rerank(positions, candidate rows [B, C]) → [B, C].

    Items outside the candidate set keep their retrieval order below every candidate, so metrics
    at cutoffs ≤ candidates depend only on the reranker.
    """
    def score(positions: np.ndarray) -> np.ndarray:
        base = mask_known(retrieval(positions), [eval_set.known[i] for i in positions])
        top = np.argpartition(-base, candidates - 1, axis=1)[:, :candidates]
        rows = np.arange(len(positions))[:, None]
        valid = np.isfinite(base[rows, top])
        reranked = np.where(valid, rerank(positions, top), -np.inf)
        order = np.argsort(-reranked, axis=1, kind="stable")
        out = base.astype(np.float64) - 1e9  # below any candidate, retrieval order kept
        out[rows, top[rows, order]] = np.where(valid[rows, order],
                                               np.arange(candidates, 0, -1, dtype=np.float64), -np.inf)
        return out
    return score


def format_table(results: dict[str, dict[str, float]], columns: Sequence[str]) -> str:
    """Markdown table: one row per model, one column per metric."""
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, metrics in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{metrics.get(c, float('nan')):.4f}"
                                                 for c in columns) + " |")
    return "\n".join(lines)


def interval(values: Sequence[float]) -> dict[str, float]:
    """Mean and 95% t-interval half-width over seeds (0 for a single seed)."""
    x = np.asarray(values, dtype=np.float64)
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))) \
        if len(x) > 1 else 0.0
    return {"mean": float(x.mean()), "ci95": half, "n": float(len(x))}
