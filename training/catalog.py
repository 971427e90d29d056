"""Builds the runtime ItemCatalog and user-attribute encoder from a dataset's training split."""
from __future__ import annotations

import numpy as np
import pandas as pd

from recsys.features import ItemCatalog, UserAttributeEncoder, tokenize_title
from training.data.schema import (
    DESCRIPTION,
    GENRE_SEPARATOR,
    GENRES,
    ITEM_ID,
    TIMESTAMP,
    TITLE,
    USER_ID,
    Dataset,
)
from training.follows import count_follows
from training.sequences import build_sequences

NO_GENRE = "(none)"


def genre_vocabulary(items: pd.DataFrame) -> tuple[str, ...]:
    names = {g for value in items[GENRES] for g in str(value).split(GENRE_SEPARATOR) if g}
    return tuple(sorted(names)) or (NO_GENRE,)


def build_catalog(
    dataset: Dataset, train: pd.DataFrame, title_buckets: int, title_tokens: int,
    served: pd.DataFrame | None = None,
) -> ItemCatalog:
    """Every item with metadata gets a row (cold items included); stats (popularity, novelty,
    what followed each item) come from `train` only, the served popularity
    (ItemCatalog.served_popularity) from `served` where given."""
    items = dataset.items.reset_index(drop=True)
    n = len(items)
    vocab = genre_vocabulary(items)
    position = {g: j for j, g in enumerate(vocab)}
    genres = np.zeros((n + 1, len(vocab)), dtype=np.float32)
    tokens = np.zeros((n + 1, title_tokens), dtype=np.int64)
    descriptions = items[DESCRIPTION] if DESCRIPTION in items else pd.Series([""] * n)
    for i, (value, title, text) in enumerate(zip(items[GENRES], items[TITLE], descriptions), 1):
        for g in str(value).split(GENRE_SEPARATOR):
            if g in position:
                genres[i, position[g]] = 1.0
        tokens[i] = tokenize_title(f"{title} {text}", title_buckets, title_tokens)
    row = pd.Series(np.arange(1, n + 1), index=items[ITEM_ID].astype(str))

    def counted(events: pd.DataFrame) -> np.ndarray:
        counts = events[ITEM_ID].value_counts()
        out = np.zeros(n + 1, dtype=np.float32)
        out[row[counts.index].to_numpy()] = counts.to_numpy()
        return out

    popularity = counted(train)
    first_seen = train.groupby(ITEM_ID)[TIMESTAMP].min()
    novelty = np.ones(n + 1, dtype=np.float32)  # never seen in training: newest
    novelty[row[first_seen.index].to_numpy()] = first_seen.rank(pct=True).to_numpy()
    novelty[0] = 0.0
    rows = {item_id: int(r) for item_id, r in row.items()}
    return ItemCatalog(
        item_ids=np.array([""] + items[ITEM_ID].astype(str).tolist(), dtype=np.str_),
        titles=np.array([""] + items[TITLE].astype(str).tolist(), dtype=np.str_),
        genre_vocab=vocab,
        genres=genres,
        title_tokens=tokens,
        popularity=popularity,
        novelty=novelty,
        served_counts=None if served is None else counted(served),
        follows=count_follows(build_sequences(train, rows).sequences, n + 1),
    )


def build_attribute_encoder(dataset: Dataset) -> UserAttributeEncoder:
    if dataset.users is None:
        return UserAttributeEncoder({})
    vocab = {
        column: tuple(sorted(dataset.users[column].dropna().astype(str).unique()))
        for column in dataset.user_attribute_columns
    }
    return UserAttributeEncoder(vocab)


def user_attribute_matrix(
    dataset: Dataset, encoder: UserAttributeEncoder, user_ids: list[str]
) -> np.ndarray:
    """[len(user_ids), A] attribute ids in the given user order (zeros for unknown users)."""
    width = max(len(encoder.names), 1)
    out = np.zeros((len(user_ids), width), dtype=np.int64)
    if dataset.users is None:
        return out
    table = dataset.users.set_index(USER_ID)
    for i, user in enumerate(user_ids):
        if user in table.index:
            out[i] = encoder.encode(table.loc[user].astype(str).to_dict())
    return out
