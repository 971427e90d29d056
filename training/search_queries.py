"""Search queries for the offline evaluation, generated from held-out items, seeded.

Known-item queries are 1-3 consecutive words of the item's title (its trailing year left out),
the way a person half remembers a title; a window of only short words ("the", "of a") is never
drawn, since nobody looks for a film that way. The typo variant of each query has one edit in
its longest word: a deletion, an insertion, a substitution or two neighbours swapped.
Category queries name one genre of the held-out item, written as the catalogue names it.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass

import numpy as np

from recsys.features import ItemCatalog

MAX_WORDS = 3
MIN_CONTENT_LENGTH = 4  # a window holds at least one word this long
_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")
EDITS = ("delete", "insert", "substitute", "transpose")


@dataclass(frozen=True)
class KnownItemQuery:
    user: int  # position in the evaluation set (whose held-out item it looks for)
    target: int  # catalogue row
    clean: str
    typo: str
    words: int  # window length


@dataclass(frozen=True)
class CategoryQuery:
    user: int  # position in the evaluation set
    target: int
    text: str
    genre: int  # column


def title_words(title: str) -> list[str]:
    return _YEAR.sub("", title).split()


def letters(word: str) -> int:
    return sum(c.isalpha() for c in word)


def title_window(title: str, rng: np.random.Generator) -> list[str]:
    """1-MAX_WORDS consecutive words holding one word of MIN_CONTENT_LENGTH letters or more;
    the whole title when no window does."""
    words = title_words(title)
    length = int(rng.integers(1, MAX_WORDS + 1))
    while length >= 1:
        starts = [s for s in range(len(words) - length + 1)
                  if any(letters(w) >= MIN_CONTENT_LENGTH for w in words[s:s + length])]
        if starts:
            start = starts[int(rng.integers(len(starts)))]
            return words[start:start + length]
        length -= 1
    return words


def with_typo(words: list[str], rng: np.random.Generator, tries: int = 8) -> list[str]:
    """`words` with one edit in the longest word (by letters), drawn again while the edit
    changes nothing (two equal letters swapped); unchanged without letters."""
    for _ in range(tries):
        edited = one_edit(words, rng)
        if edited != words:
            return edited
    return list(words)


def one_edit(words: list[str], rng: np.random.Generator) -> list[str]:
    target = max(range(len(words)), key=lambda i: letters(words[i]), default=None)
    if target is None or letters(words[target]) < 2:
        return list(words)
    word = words[target]
    spots = [i for i, c in enumerate(word) if c.isalpha()]
    edit = EDITS[int(rng.integers(len(EDITS)))]
    at = spots[int(rng.integers(len(spots)))]
    letter = string.ascii_lowercase[int(rng.integers(26))]
    if edit == "delete":
        word = word[:at] + word[at + 1:]
    elif edit == "insert":
        word = word[:at] + letter + word[at:]
    elif edit == "substitute":
        other = [c for c in string.ascii_lowercase if c != word[at].lower()]
        word = word[:at] + other[int(rng.integers(len(other)))] + word[at + 1:]
    else:
        nxt = at + 1 if at + 1 < len(word) else at - 1
        first, second = sorted((at, nxt))
        word = word[:first] + word[second] + word[first] + word[second + 1:]
    return [*words[:target], word, *words[target + 1:]]


def known_item_queries(catalog: ItemCatalog, targets: np.ndarray,
                       seed: int) -> list[KnownItemQuery]:
    rng = np.random.default_rng(seed)
    queries = []
    for user, target in enumerate(targets.tolist()):
        window = title_window(str(catalog.titles[target]), rng)
        queries.append(KnownItemQuery(user, int(target), " ".join(window),
                                      " ".join(with_typo(window, rng)), len(window)))
    return queries


def category_queries(catalog: ItemCatalog, targets: np.ndarray,
                     seed: int) -> list[CategoryQuery]:
    """One query per user whose held-out item has a genre, naming one of its genres."""
    rng = np.random.default_rng(seed)
    queries = []
    for user, target in enumerate(targets.tolist()):
        genres = np.flatnonzero(catalog.genres[target] > 0)
        if genres.size:
            genre = int(genres[int(rng.integers(genres.size))])
            queries.append(CategoryQuery(user, int(target), catalog.genre_vocab[genre].lower(),
                                         genre))
    return queries
