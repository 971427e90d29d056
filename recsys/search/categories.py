"""Query words that name a category or a decade, built from what the catalogue has: its genre
vocabulary and the years of its titles. Nothing here is written for one dataset."""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from recsys.search.text import tokenize

Phrase = tuple[str, ...]
_DECADE = re.compile(r"(\d{2}|\d{4})s")  # "90s", "1990s" ("'90s" and "90's" normalise to these)


def inflections(word: str) -> set[str]:
    """The word with the English plural and singular endings a query may use."""
    forms = {word, word + "s", word + "es"}
    if word.endswith("y") and len(word) > 2:
        forms.add(word[:-1] + "ies")
    if word.endswith("s") and len(word) > 3:
        forms.add(word[:-1])
    return forms


def alias_phrases(name: str) -> set[Phrase]:
    """How a query may write a category name: its words ("sci fi"), run together ("scifi"),
    the last word plural or singular ("thrillers", "children")."""
    words = tuple(tokenize(name))
    if not words:
        return set()
    spellings = {words, ("".join(words),)} if len(words) > 1 else {words}
    return {(*spelling[:-1], form) for spelling in spellings for form in inflections(spelling[-1])}


@dataclass(frozen=True)
class CategoryWords:
    """Phrases that name exactly one genre column (a phrase two genres share names neither)."""

    phrases: Mapping[Phrase, int]
    canonical: Mapping[int, Phrase]  # genre column -> its name's words (what the index holds)
    longest: int  # words in the longest phrase

    @classmethod
    def from_genres(cls, genre_vocab: Sequence[str], columns: Iterable[int]) -> CategoryWords:
        """Aliases of the genres at `columns` (those some item has)."""
        named: dict[Phrase, set[int]] = defaultdict(set)
        canonical = {}
        for column in columns:
            canonical[column] = tuple(tokenize(genre_vocab[column]))
            for phrase in alias_phrases(genre_vocab[column]):
                named[phrase].add(column)
        phrases = {p: next(iter(c)) for p, c in named.items() if len(c) == 1}
        return cls(phrases, canonical, max((len(p) for p in phrases), default=0))

    @property
    def words(self) -> set[str]:
        return {word for phrase in self.phrases for word in phrase}

    def match(self, words: Sequence[str], start: int) -> tuple[int, int] | None:
        """(genre column, words matched) of the longest phrase at words[start:]; None if none."""
        for length in range(min(self.longest, len(words) - start), 0, -1):
            column = self.phrases.get(tuple(words[start:start + length]))
            if column is not None:
                return column, length
        return None


@dataclass(frozen=True)
class Decades:
    """The catalogue's years (first, last; 0, 0 without any): "90s" is read in the latest
    century whose decade the catalogue reaches, "1990s" as written."""

    first: int = 0
    last: int = 0

    def years_of(self, word: str) -> tuple[int, int] | None:
        """(first year, last year) of a decade word; None for any other word (bare numbers
        such as "2001" stay text) or when the catalogue has no years."""
        match = _DECADE.fullmatch(word)
        if match is None or not self.last:
            return None
        digits = match.group(1)
        if int(digits) % 10:
            return None
        if len(digits) == 4:
            return int(digits), int(digits) + 9
        starts = [century + int(digits) for century in range(self.first // 100 * 100,
                                                             self.last // 100 * 100 + 100, 100)]
        reached = [s for s in starts if s <= self.last and s + 9 >= self.first]
        return (max(reached), max(reached) + 9) if reached else None
