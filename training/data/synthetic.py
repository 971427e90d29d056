"""A seeded synthetic catalogue and event log with popularity skew, taste and sequential signal."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from training.data import schema
from training.data.validation import validate

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Each genre has its own title words, so title tokens carry genre signal.
GENRE_WORDS: dict[str, str] = {  # four words a genre; titles are built from them
    "Action": "Fury Strike Chase Vengeance", "Comedy": "Laughs Mixup Prank Goofball",
    "Drama": "Tears Family Silence Promise", "Horror": "Haunting Crypt Nightmare Curse",
    "Romance": "Love Kiss Wedding Darling", "Sci-Fi": "Galaxy Robot Android Nebula",
    "Thriller": "Conspiracy Pursuit Suspect Alibi", "Documentary": "Truth Journey Planet Inside",
    "Animation": "Toon Bunny Pixel Doodle", "Fantasy": "Dragon Wizard Realm Enchanted",
    "Crime": "Heist Mob Detective Gangster", "Western": "Outlaw Saddle Frontier Sheriff",
    "Mystery": "Riddle Clue Vanishing Manor", "Musical": "Melody Rhythm Chorus Ballad",
    "War": "Battalion Trenches Siege Platoon", "Adventure": "Quest Treasure Voyage Jungle",
    "Children": "Playground Lullaby Teddy Treehouse", "Film-Noir": "Dame Smoke Alley Gumshoe",
}
AGE_BUCKETS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
AGE_SHARES = (0.04, 0.21, 0.33, 0.21, 0.08, 0.08, 0.05)
GENDERS = ("M", "F")
OCCUPATIONS = (
    "student", "engineer", "educator", "administrator", "programmer", "librarian", "writer",
    "technician", "executive", "scientist", "artist", "healthcare", "retired", "other",
)
_SECOND_GENRE_SHARE = 0.35
_RECENCY_DECAY = 0.6  # weight of the old recent-taste vector when an event is added


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and shape of a synthetic dataset; the same config and seed give the same data."""

    n_users: int = 1000
    n_items: int = 2000
    n_genres: int = 12
    interactions_per_user: float = 60.0  # mean events per user; every user gets at least 3
    latent_dim: int = 8
    popularity_exponent: float = 1.0  # item popularity ∝ rank ** -exponent (Zipf)
    seed: int = 0
    n_cold_items: int | None = None  # metadata but no interactions; None: 5% of n_items
    start_timestamp: int = 1_600_000_000  # unix seconds of the earliest possible event
    genre_stickiness: float = 0.6  # chance an event stays in the genre of the one before
    recency_weight: float = 1.5  # pull of the recently consumed items on the next choice
    candidates_per_event: int = 16  # popularity-drawn candidates the user chooses from

    def __post_init__(self) -> None:
        minimum = {"n_users": 1, "n_items": 1, "n_genres": 1, "latent_dim": 1,
                   "candidates_per_event": 1, "interactions_per_user": 3, "popularity_exponent": 0}
        for name, low in minimum.items():
            if getattr(self, name) < low:
                raise ValueError(f"SyntheticConfig.{name} must be >= {low}, "
                                 f"got {getattr(self, name)}")
        if not 0.0 <= self.genre_stickiness < 1.0:
            raise ValueError("SyntheticConfig.genre_stickiness must be in [0, 1), "
                             f"got {self.genre_stickiness}")
        if not 0 <= self.cold_items <= self.n_items - self.n_genres:
            raise ValueError(f"SyntheticConfig.n_cold_items must be in [0, n_items - n_genres = "
                             f"{self.n_items - self.n_genres}], got {self.cold_items}")

    @property
    def cold_items(self) -> int:
        return round(0.05 * self.n_items) if self.n_cold_items is None else self.n_cold_items


@dataclass(frozen=True)
class _Catalogue:
    primary: IntArray  # [n_items] genre index
    secondary: IntArray  # [n_items] genre index, -1 when none
    latent: FloatArray  # [n_items, latent_dim]
    warm_by_genre: IntArray  # warm item indices, grouped by primary genre
    block_cdf: FloatArray  # genre g's popularity CDF spans [g, g + 1], aligned to warm_by_genre


@dataclass(frozen=True)
class _Users:
    attributes: pd.DataFrame  # user_id, age_bucket, gender, occupation
    genre_cdf: FloatArray  # [n_users, n_genres] cumulative genre preference
    taste: FloatArray  # [n_users, latent_dim]


def generate_synthetic(config: SyntheticConfig | None = None) -> schema.Dataset:
    """A validated Dataset named "synthetic": ids "u<n>" and "i<n>", ratings 1-5, unix seconds."""
    config = config or SyntheticConfig()
    rng = np.random.default_rng(config.seed)
    centroids = rng.normal(size=(config.n_genres, config.latent_dim))
    catalogue = _make_catalogue(config, centroids, rng)
    users = _make_users(config, centroids, catalogue, rng)
    user, item, affinity = _simulate(config, catalogue, users, rng)
    interactions = pd.DataFrame({
        schema.USER_ID: _ids("u", user),
        schema.ITEM_ID: _ids("i", item),
        schema.RATING: _ratings(affinity, rng),
        schema.TIMESTAMP: _timestamps(config, user, rng),
    })
    items = _item_table(config, catalogue, rng)
    dataset, _ = validate(schema.Dataset("synthetic", interactions, items, users.attributes))
    return dataset


def genre_names(n_genres: int) -> tuple[str, ...]:
    known = tuple(GENRE_WORDS)
    return known[:n_genres] + tuple(f"Genre{k + 1}" for k in range(len(known), n_genres))


def _ids(prefix: str, indices: npt.NDArray[np.integer]) -> npt.NDArray[np.object_]:
    return np.array([f"{prefix}{i}" for i in indices.tolist()], dtype=object)


def _make_catalogue(
    config: SyntheticConfig, centroids: FloatArray, rng: np.random.Generator
) -> _Catalogue:
    n, g = config.n_items, config.n_genres
    shares = rng.dirichlet(np.full(g, 5.0))
    primary = rng.choice(g, size=n, p=shares)
    primary[:g] = np.arange(g)  # every genre has an item; cold items are drawn from the rest
    has_second = (rng.random(n) < _SECOND_GENRE_SHARE) & (g > 1)
    secondary = np.where(has_second, (primary + rng.integers(1, max(g, 2), size=n)) % g, -1)
    latent = centroids[primary] + 0.7 * rng.normal(size=(n, config.latent_dim))
    latent += np.where(has_second[:, None], 0.5 * centroids[np.maximum(secondary, 0)], 0.0)
    popularity = ((rng.permutation(n) + 1.0) ** -config.popularity_exponent).astype(np.float64)
    cold = g + rng.choice(n - g, size=config.cold_items, replace=False)
    popularity[cold] = 0.0
    warm = np.flatnonzero(popularity > 0)
    warm = warm[np.argsort(primary[warm], kind="stable")]
    return _Catalogue(primary, secondary, latent, warm, _block_cdf(primary[warm], popularity[warm]))


def _block_cdf(genres: IntArray, weights: FloatArray) -> FloatArray:
    """Per-genre cumulative share offset by the genre index: one searchsorted samples any genre."""
    totals = np.bincount(genres, weights=weights)
    before = np.concatenate([[0.0], np.cumsum(totals)])[genres]
    cdf = np.asarray(genres + (np.cumsum(weights) - before) / totals[genres], dtype=np.float64)
    ends = np.r_[genres[1:] != genres[:-1], True]
    cdf[ends] = genres[ends] + 1.0  # exact block ends: rounding never leaks into the next genre
    return cdf


def _make_users(
    config: SyntheticConfig, centroids: FloatArray, catalogue: _Catalogue, rng: np.random.Generator
) -> _Users:
    n, g = config.n_users, config.n_genres
    attributes = pd.DataFrame({
        schema.USER_ID: _ids("u", np.arange(n)),
        "age_bucket": rng.choice(AGE_BUCKETS, size=n, p=AGE_SHARES),
        "gender": rng.choice(GENDERS, size=n, p=(0.65, 0.35)),
        "occupation": rng.choice(OCCUPATIONS, size=n),
    })
    # Attributes shift genre preference, so they carry (weak) signal too.
    logits = np.zeros((n, g))
    for column, values in (("age_bucket", AGE_BUCKETS), ("gender", GENDERS),
                           ("occupation", OCCUPATIONS)):
        bias = rng.normal(size=(len(values), g))
        logits += bias[pd.Index(values).get_indexer(attributes[column])]
    from_attributes = np.exp(logits - logits.max(axis=1, keepdims=True))
    from_attributes /= from_attributes.sum(axis=1, keepdims=True)
    personal = rng.gamma(0.3, size=(n, g)) + 1e-9
    personal /= personal.sum(axis=1, keepdims=True)
    preference = 0.6 * personal + 0.4 * from_attributes
    preference *= np.bincount(catalogue.primary[catalogue.warm_by_genre], minlength=g) > 0
    preference /= preference.sum(axis=1, keepdims=True)
    taste = preference @ centroids + 0.5 * rng.normal(size=(n, config.latent_dim))
    return _Users(attributes, np.cumsum(preference, axis=1), taste)


def _simulate(
    config: SyntheticConfig, catalogue: _Catalogue, users: _Users, rng: np.random.Generator
) -> tuple[IntArray, IntArray, FloatArray]:
    """Every user's events in order, as flat (user, item, affinity) arrays grouped by user."""
    wanted = _sequence_lengths(config, rng)
    steps = np.ceil(wanted * 1.15).astype(np.int64) + 3  # headroom for repeats dropped below
    order = np.argsort(-steps, kind="stable")  # users still active at step t are a prefix
    steps_sorted = steps[order]
    offsets = np.concatenate([[0], np.cumsum(steps_sorted)[:-1]])
    item = np.empty(int(steps_sorted.sum()), dtype=np.int64)
    affinity = np.empty(len(item))
    genre = np.zeros(len(order), dtype=np.int64)
    recent = np.zeros((len(order), config.latent_dim))
    seen = _SeenItems(len(order), config.n_items)
    taste = users.taste[order]
    genre_cdf = users.genre_cdf[order]
    for t in range(int(steps_sorted[0])):
        active = int(np.searchsorted(-steps_sorted, -t, side="left"))
        fresh = (rng.random((active, 1)) > genre_cdf[:active]).sum(axis=1)
        stay = (rng.random(active) < config.genre_stickiness) & (t > 0)
        genre[:active] = np.where(stay, genre[:active], np.minimum(fresh, config.n_genres - 1))
        chosen, score = _choose(config, catalogue, genre[:active], taste[:active],
                                recent[:active], seen, rng)
        recent[:active] = _RECENCY_DECAY * recent[:active] + (1 - _RECENCY_DECAY) * (
            catalogue.latent[chosen])
        seen.add(chosen)
        item[offsets[:active] + t] = chosen
        affinity[offsets[:active] + t] = score
    user = np.repeat(order, steps_sorted)
    return _first_visits(user, item, affinity, wanted)


class _SeenItems:
    """Per-user hashed item sets: a bit per (user, bucket); collisions only over-report seen."""

    def __init__(self, n_users: int, n_items: int) -> None:
        self._buckets = min(n_items, max(256, 2**24 // max(n_users, 1)))
        self._hash = 1 if n_items <= self._buckets else 2_654_435_761
        self._bits = np.zeros((n_users, self._buckets), dtype=bool)

    def _bucket(self, items: IntArray) -> IntArray:
        return (items * self._hash) % self._buckets

    def contains(self, items: IntArray) -> npt.NDArray[np.bool_]:
        """items: [active users, k] for the first `active` users → [active users, k]."""
        rows = np.arange(len(items))[:, None]
        return self._bits[rows, self._bucket(items)]

    def add(self, items: IntArray) -> None:
        """items: [active users], one new item for each of the first `active` users."""
        self._bits[np.arange(len(items)), self._bucket(items)] = True


def _sequence_lengths(config: SyntheticConfig, rng: np.random.Generator) -> IntArray:
    extra = config.interactions_per_user - 3
    shape = 2.0  # negative binomial: a long tail of heavy users
    return 3 + rng.negative_binomial(shape, shape / (shape + extra), size=config.n_users)


def _choose(
    config: SyntheticConfig, catalogue: _Catalogue, genre: IntArray, taste: FloatArray,
    recent: FloatArray, seen: _SeenItems, rng: np.random.Generator,
) -> tuple[IntArray, FloatArray]:
    """Each user picks among popularity-drawn candidates of their genre by taste and recency."""
    draws = genre[:, None] + rng.random((len(genre), config.candidates_per_event))
    slots = np.searchsorted(catalogue.block_cdf, draws, side="right")
    candidates = catalogue.warm_by_genre[np.minimum(slots, len(catalogue.block_cdf) - 1)]
    vectors = catalogue.latent[candidates]
    score = np.einsum("ukd,ud->uk", vectors, taste)
    pull = np.einsum("ukd,ud->uk", vectors, recent)
    noisy = score + config.recency_weight * pull + rng.gumbel(size=score.shape)
    noisy -= 1e6 * seen.contains(candidates)  # a seen item only when all candidates were seen
    pick = np.argmax(noisy, axis=1)
    rows = np.arange(len(genre))
    return candidates[rows, pick], score[rows, pick]


def _first_visits(
    user: IntArray, item: IntArray, affinity: FloatArray, wanted: IntArray
) -> tuple[IntArray, IntArray, FloatArray]:
    """Drop re-visits of an item by the same user, then keep each user's first `wanted` events."""
    first = ~pd.DataFrame({"u": user, "i": item}).duplicated().to_numpy()
    user, item, affinity = user[first], item[first], affinity[first]
    rank = pd.Series(user).groupby(user).cumcount().to_numpy()
    keep = rank < wanted[user]
    return user[keep], item[keep], affinity[keep]


def _ratings(affinity: FloatArray, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    z = (affinity - affinity.mean()) / (affinity.std() + 1e-9)
    stars = np.rint(3.6 + 0.9 * z + rng.normal(scale=0.6, size=len(z)))
    return np.asarray(np.clip(stars, 1, 5), dtype=np.float32)


def _timestamps(config: SyntheticConfig, user: IntArray, rng: np.random.Generator) -> IntArray:
    """Strictly increasing per user: a random start within a year, then gaps of ~1 day."""
    start = config.start_timestamp + rng.integers(0, 365 * 86_400, size=config.n_users)
    gaps = 1 + rng.exponential(86_400.0, size=len(user)).astype(np.int64)
    first = np.r_[True, user[1:] != user[:-1]]
    gaps[first] = 0
    run = np.cumsum(gaps)
    run -= np.maximum.accumulate(np.where(first, run, 0))
    return start[user] + run


def _item_table(
    config: SyntheticConfig, catalogue: _Catalogue, rng: np.random.Generator
) -> pd.DataFrame:
    names = np.array(genre_names(config.n_genres), dtype=object)
    words = np.array([_genre_words(name, k) for k, name in enumerate(names)], dtype=object)
    n = config.n_items
    first_word = words[catalogue.primary, rng.integers(0, words.shape[1], size=n)]
    second_genre = np.where(catalogue.secondary >= 0, catalogue.secondary, catalogue.primary)
    second_word = words[second_genre, rng.integers(0, words.shape[1], size=n)]
    ids = _ids("i", np.arange(n))
    with_second = np.where(catalogue.secondary >= 0, "|" + names[second_genre], "")
    return pd.DataFrame({
        schema.ITEM_ID: ids,
        schema.TITLE: first_word + " " + second_word + " " + ids,
        schema.GENRES: names[catalogue.primary] + with_second.astype(object),
        schema.DESCRIPTION: "",
    })


def _genre_words(name: str, index: int) -> list[str]:
    return GENRE_WORDS.get(name, " ".join(f"G{index + 1}w{j}" for j in range(4))).split()
