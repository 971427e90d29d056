"""Baselines under the same protocol: popularity, implicit's ALS matrix factorisation and EASE."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from training.evaluate import CatalogueScorer, EvalSet, evaluate_scorer


def popularity_scorer(popularity: np.ndarray) -> CatalogueScorer:
    def score(positions: np.ndarray) -> np.ndarray:
        return np.broadcast_to(popularity, (len(positions), len(popularity)))
    return score


@dataclass(frozen=True)
class ALSResult:
    factors: int
    regularization: float
    scorer: CatalogueScorer


def _user_items(eval_set: EvalSet, n_rows: int) -> sp.csr_matrix:
    rows = np.concatenate([np.full(len(s), u) for u, s in enumerate(eval_set.histories.sequences)])
    cols = np.concatenate(eval_set.histories.sequences)
    data = np.ones(len(cols), dtype=np.float32)
    matrix = sp.csr_matrix((data, (rows, cols)), shape=(len(eval_set.user_ids), n_rows))
    matrix.sum_duplicates()
    return matrix


def fit_als(eval_set: EvalSet, n_rows: int, factors: int, regularization: float,
            iterations: int, seed: int = 0) -> CatalogueScorer:
    """ALS on the eval users' histories (the same events the other models may use)."""
    with threadpool_limits(1, "blas"):  # implicit warns and slows down with threaded BLAS
        model = AlternatingLeastSquares(factors=factors, regularization=regularization,
                                        iterations=iterations, random_state=seed)
        model.fit(_user_items(eval_set, n_rows), show_progress=False)
    users = np.asarray(model.user_factors)
    items = np.asarray(model.item_factors)

    def score(positions: np.ndarray) -> np.ndarray:
        return users[positions] @ items.T
    return score


def tuned_als(validation: EvalSet, test: EvalSet, n_rows: int, factors: Sequence[int],
              regularization: Sequence[float], iterations: int) -> ALSResult:
    """Pick factors/regularisation by validation HR@10, then refit on the test histories."""
    best = max(
        ((f, r) for f in factors for r in regularization),
        key=lambda fr: evaluate_scorer(fit_als(validation, n_rows, fr[0], fr[1], iterations),
                                       validation, (10,))["hr@10"],
    )
    return ALSResult(best[0], best[1], fit_als(test, n_rows, best[0], best[1], iterations))


@dataclass(frozen=True)
class EASEResult:
    regularization: float
    scorer: CatalogueScorer


EASE_MAX_ITEMS = 20_000  # its item-item matrix is dense: 20K items is 1.6 GB of float32


def fit_ease(eval_set: EvalSet, n_rows: int, regularization: float) -> CatalogueScorer:
    """EASE (Steck, 2019): item-item weights B = I - P / diag(P) with P = (XᵀX + λI)⁻¹ over the
    eval users' histories, the diagonal forced to zero; a user's scores are their row of X B."""
    users = _user_items(eval_set, n_rows)
    users.data[:] = 1.0
    gram = (users.T @ users).toarray().astype(np.float64)
    gram[np.diag_indices(n_rows)] += regularization
    inverse = np.linalg.inv(gram)
    weights = (-inverse / np.diag(inverse)).astype(np.float32)
    weights[np.diag_indices(n_rows)] = 0.0

    def score(positions: np.ndarray) -> np.ndarray:
        return np.asarray(users[positions] @ weights)
    return score


def tuned_ease(validation: EvalSet, test: EvalSet, n_rows: int,
               regularization: Sequence[float]) -> EASEResult | None:
    """λ picked by validation HR@10, then refit on the test histories; None above
    EASE_MAX_ITEMS items (the dense matrix would not fit)."""
    if n_rows > EASE_MAX_ITEMS:
        return None
    best = max(regularization, key=lambda lam: evaluate_scorer(
        fit_ease(validation, n_rows, lam), validation, (10,))["hr@10"])
    return EASEResult(best, fit_ease(test, n_rows, best))
