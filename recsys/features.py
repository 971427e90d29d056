"""Feature building shared by training and serving: one definition, so no training/serving skew."""
from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from recsys.context import CONTEXT_FEATURES, Context, context_features
from recsys.follows import FollowTable

PAD = 0  # index 0 is padding in every id vocabulary and the "unknown" item/attribute
DENSE_FEATURES = (
    "similarity",
    "log_popularity",
    "novelty",
    "category_affinity",
    "category_recency",
    "history_length",
    "recent_max_similarity",
    "recent_mean_similarity",
    "hour_sin",
    "hour_cos",
    "device_web",
    "device_mobile",
    "device_tv",
    "hours_since_last_event",
    "recent_max_follow",
    "recent_mean_follow",
)
_TOKEN = re.compile(r"[a-z0-9]+")
_RECENCY_DECAY = 0.9
RECENT_ITEMS = 5  # history items compared one by one with each candidate (item-to-item signal)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def tokenize_title(title: str, buckets: int, max_tokens: int) -> IntArray:
    """Hash the lower-cased word tokens of a title into [1, buckets); 0 pads to max_tokens."""
    ids = [1 + zlib.crc32(tok.encode()) % (buckets - 1) for tok in _TOKEN.findall(title.lower())]
    out = np.zeros(max_tokens, dtype=np.int64)
    out[: min(len(ids), max_tokens)] = ids[:max_tokens]
    return out


@dataclass(frozen=True)
class ItemCatalog:
    """Item vocabulary and content arrays. Row 0 is padding/unknown; item i lives at row i."""

    item_ids: npt.NDArray[np.str_]  # [n+1], item_ids[0] == ""
    titles: npt.NDArray[np.str_]  # [n+1]
    genre_vocab: tuple[str, ...]
    genres: FloatArray  # [n+1, G] multi-hot
    title_tokens: IntArray  # [n+1, T] hashed tokens, 0 = pad
    popularity: FloatArray  # [n+1] counts before the ranker's queries (a feature: no self-count)
    novelty: FloatArray  # [n+1] in [0, 1]: percentile of the item's first interaction time
    served_counts: FloatArray | None = None  # [n+1] counts over every training event
    follows: FollowTable | None = None  # what followed each item (the ranker's features)

    @property
    def served_popularity(self) -> FloatArray:
        """[n+1] the counts behind the popular order the service shows (the popular source, new
        users, the fallbacks): every training event, the ranker's held-out ones included;
        `popularity` in a catalogue written before them."""
        return self.popularity if self.served_counts is None else self.served_counts

    @property
    def size(self) -> int:
        """Number of real items (excluding the padding row)."""
        return len(self.item_ids) - 1

    def index_lookup(self) -> dict[str, int]:
        return {item_id: i for i, item_id in enumerate(self.item_ids) if i != PAD}

    @cached_property
    def popular_rows(self) -> IntArray:
        """Catalogue rows by served popularity, most popular first (ties keep row order), the
        padding row left out. Sorted once per catalogue: the popular source, cold-start vectors
        and the retrieval fallback all read prefixes of it."""
        order = np.argsort(-self.served_popularity, kind="stable")
        rows = order[order != PAD].astype(np.int64)
        rows.flags.writeable = False
        return rows

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {name: getattr(self, name) for name in _CATALOG_ARRAYS}
        return {"genre_vocab": np.asarray(self.genre_vocab, dtype=np.str_),
                **{name: values for name, values in arrays.items() if values is not None},
                **(self.follows.to_arrays() if self.follows else {})}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ItemCatalog:
        """The catalogue `to_arrays` wrote; one written before `served_counts` or `follows`
        has none."""
        return cls(genre_vocab=tuple(str(g) for g in arrays["genre_vocab"]),
                   follows=FollowTable.from_arrays(arrays),
                   **{name: np.asarray(arrays[name], dtype=dtype)
                      for name, dtype in _CATALOG_ARRAYS.items() if name in arrays})


# ItemCatalog's array fields and the dtypes they are read back as
_CATALOG_ARRAYS: dict[str, type] = {
    "item_ids": np.str_, "titles": np.str_, "genres": np.float32, "title_tokens": np.int64,
    "popularity": np.float32, "novelty": np.float32, "served_counts": np.float32}


@dataclass(frozen=True)
class UserAttributeEncoder:
    """Maps categorical user attributes to ids; unknown or missing values map to 0."""

    vocabularies: Mapping[str, tuple[str, ...]]  # attribute -> values; id = position + 1

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.vocabularies)

    def cardinalities(self) -> list[int]:
        return [len(v) + 1 for v in self.vocabularies.values()]

    def encode(self, attributes: Mapping[str, str] | None) -> IntArray:
        """[A] int64 ids; an encoder with no attributes yields one always-zero column."""
        attributes = attributes or {}
        if not self.vocabularies:
            return np.zeros(1, dtype=np.int64)
        out = np.zeros(len(self.vocabularies), dtype=np.int64)
        for j, (name, values) in enumerate(self.vocabularies.items()):
            value = attributes.get(name)
            if value is not None and value in values:
                out[j] = values.index(value) + 1
        return out


def encode_history(item_indices: Sequence[int], length: int) -> IntArray:
    """Last `length` item indices, oldest first and left-padded with 0 (most recent is last)."""
    out = np.zeros(length, dtype=np.int64)
    tail = list(item_indices)[-length:] if length else []
    if tail:
        out[length - len(tail) :] = tail
    return out


def recent_rows(history: IntArray) -> IntArray:
    """The catalogue rows of a padded history, pads dropped, oldest first."""
    return history[history != PAD]


def user_tower_feeds(history: IntArray, attributes: IntArray) -> dict[str, np.ndarray]:
    """ONNX feeds for the user tower: history [B, H] and attributes [B, A], both int64."""
    return {"history": np.ascontiguousarray(history, dtype=np.int64),
            "attributes": np.ascontiguousarray(attributes, dtype=np.int64)}


def item_tower_feeds(catalog: ItemCatalog, indices: IntArray) -> dict[str, np.ndarray]:
    """ONNX feeds for the item tower for the given catalogue rows [B]."""
    return {
        "item": np.ascontiguousarray(indices, dtype=np.int64),
        "genres": np.ascontiguousarray(catalog.genres[indices]),
        "title_tokens": np.ascontiguousarray(catalog.title_tokens[indices]),
    }


@dataclass(frozen=True)
class UserProfile:
    """Per-user aggregates of the history, computed once per request (or per training row)."""

    genre_profile: FloatArray  # [G] mean genre vector of the history, L2-normalised
    genre_recency: FloatArray  # [G] max over history of decay^(age) for items of that genre
    history_length: int
    recent: IntArray  # [<= RECENT_ITEMS] most recent catalogue rows, most recent last


def user_profile(history: IntArray, catalog: ItemCatalog) -> UserProfile:
    """Profile of a padded history [H] (0 = pad, most recent last)."""
    real = recent_rows(history)
    n_genres = catalog.genres.shape[1]
    if real.size == 0:
        zeros = np.zeros(n_genres, dtype=np.float32)
        return UserProfile(zeros, zeros.copy(), 0, real)
    genres = catalog.genres[real]
    profile = genres.mean(axis=0)
    norm = float(np.linalg.norm(profile))
    if norm > 0:
        profile = profile / norm
    ages = np.arange(real.size - 1, -1, -1, dtype=np.float32)
    recency = (genres * (_RECENCY_DECAY**ages)[:, None]).max(axis=0)
    return UserProfile(profile.astype(np.float32), recency.astype(np.float32), int(real.size),
                       real[-RECENT_ITEMS:])


def dense_features(
    user_vector: FloatArray,
    profile: UserProfile,
    candidates: IntArray,
    item_vectors: FloatArray,
    catalog: ItemCatalog,
    context: FloatArray,
    cand_vecs: FloatArray | None = None,
) -> FloatArray:
    """Raw dense features [C, len(DENSE_FEATURES)] of one user's C candidates.

    user_vector [D] or [1, D]; context [6] or [1, 6] (context_features of one request);
    cand_vecs, when the caller has them, is item_vectors[candidates]. Serving calls this once per
    request and training once per ranking query, so both build every feature the same way.

    Written for one request's 1,000 candidates: one matrix product gives the user and
    recent-item similarities, and reductions run along contiguous rows (a max over a
    [1000, 5] array's short axis cost more than the product): 316 → 134 µs a call for 1,000
    candidates of the 100K benchmark model, side by side.
    """
    cand_vecs = item_vectors[candidates] if cand_vecs is None else cand_vecs
    cand_genres = catalog.genres[candidates]
    n = len(candidates)
    out = np.empty((n, len(DENSE_FEATURES)), dtype=np.float32)
    # [1 + R, C]: the user's similarity to each candidate, then each recent item's
    queries = np.vstack([np.reshape(user_vector, (1, -1)), item_vectors[profile.recent]])
    sims = np.ascontiguousarray((cand_vecs @ queries.T).T)
    out[:, 0] = sims[0]
    out[:, 1] = np.log1p(catalog.popularity[candidates])
    out[:, 2] = catalog.novelty[candidates]
    genre_norm = np.sqrt(np.einsum("ng,ng->n", cand_genres, cand_genres))
    genre_norm[genre_norm == 0] = 1.0
    out[:, 3] = (cand_genres @ profile.genre_profile) / genre_norm
    out[:, 4] = (np.ascontiguousarray(cand_genres.T) * profile.genre_recency[:, None]).max(axis=0) \
        if cand_genres.shape[1] else 0.0
    out[:, 5] = np.log1p(np.float32(profile.history_length))
    if profile.recent.size:
        out[:, 6], out[:, 7] = sims[1:].max(axis=0), sims[1:].mean(axis=0)
    else:
        out[:, 6:8] = 0.0
    out[:, 8:14] = np.reshape(context, (1, CONTEXT_FEATURES))
    out[:, 14:16] = catalog.follows.features(profile.recent, candidates) if catalog.follows \
        else 0.0
    return out


@dataclass(frozen=True)
class FeatureScaler:
    """Standardisation of the dense features, fitted on the ranker's training pairs."""

    mean: FloatArray  # [F]
    std: FloatArray  # [F], never 0

    @classmethod
    def fit(cls, dense: FloatArray) -> FeatureScaler:
        std = dense.std(axis=0)
        std[std < 1e-6] = 1.0
        return cls(dense.mean(axis=0).astype(np.float32), std.astype(np.float32))

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[float]]) -> FeatureScaler:
        return cls(np.asarray(data["mean"], dtype=np.float32), np.asarray(data["std"], dtype=np.float32))


def ranker_inputs(
    dense: FloatArray, user_vectors: FloatArray, candidates: IntArray,
    item_vectors: FloatArray, scaler: FeatureScaler, cand_vecs: FloatArray | None = None,
) -> FloatArray:
    """Ranker input [N, F + 2D]: standardised dense features, user*item product, item vector.

    user_vectors is [N, D] (training: one row per pair) or [1, D] (serving: one user,
    broadcast); the same elementwise operations either way, so both give the same bits.
    """
    cand_vecs = item_vectors[candidates] if cand_vecs is None else cand_vecs
    scaled = (dense - scaler.mean) / scaler.std
    return np.concatenate([scaled, user_vectors * cand_vecs, cand_vecs], axis=1).astype(
        np.float32, copy=False)


def user_ranker_inputs(
    user_vector: FloatArray, history: IntArray, candidates: IntArray, item_vectors: FloatArray,
    catalog: ItemCatalog, context: Context, scaler: FeatureScaler,
) -> FloatArray:
    """Ranker inputs [C, F + 2D] for one user (vector [D], padded history [H]) and C candidates.

    The serving path and the offline evaluation both call this, training builds the same rows
    through dense_features + ranker_inputs.
    """
    user = user_vector.reshape(1, -1)
    cand_vecs = item_vectors[candidates]
    dense = dense_features(user, user_profile(history, catalog), candidates, item_vectors,
                           catalog, context_features([context]), cand_vecs)
    return ranker_inputs(dense, user, candidates, item_vectors, scaler, cand_vecs)
