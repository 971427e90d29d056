"""Query understanding: normalised words, typos corrected against the titles' words, category
and decade words recognised as filters where they are not part of a title."""
from __future__ import annotations

from dataclasses import dataclass, field

from recsys.search.index import SearchIndex
from recsys.search.text import tokenize


@dataclass(frozen=True)
class ParsedQuery:
    text: str  # as the client sent it
    words: tuple[str, ...]  # what BM25 and the item tower read: normalised, typos corrected
    corrections: dict[str, str] = field(default_factory=dict)  # typed word -> word read
    categories: tuple[int, ...] = ()  # genre columns the query names, applied as filters
    years: tuple[int, int] | None = None  # the decade the query names, applied as a filter
    understood: bool = False  # some word is in the index, or a filter was recognised


@dataclass(frozen=True)
class Recognised:
    """Category and decade words found in a query's words."""

    categories: tuple[int, ...]
    years: tuple[int, int] | None
    spans: tuple[tuple[int, int, int], ...]  # (start, length, genre column or -1 for a decade)

    def rest(self, words: list[str]) -> list[str]:
        inside = {i for start, length, _ in self.spans for i in range(start, start + length)}
        return [w for i, w in enumerate(words) if i not in inside]


class QueryParser:
    """Reads queries against one SearchIndex."""

    def __init__(self, index: SearchIndex) -> None:
        self.index = index

    def parse(self, text: str) -> ParsedQuery:
        words, corrections = self.corrected(tokenize(text))
        found = self.recognise(words)
        # A category or decade word is a filter unless the query reads as a title that holds
        # it ("rocky horror", "star wars"): then it is only text. Alone it is always a filter.
        rest = found.rest(words)
        filtering = bool(found.spans) and not (rest and self.index.title_has_all(words))
        if filtering:
            words = self.canonical(words, found)
        understood = filtering or any(w in self.index.vocabulary for w in words)
        return ParsedQuery(text, tuple(words), corrections,
                           found.categories if filtering else (),
                           found.years if filtering else None, understood)

    def corrected(self, typed: list[str]) -> tuple[list[str], dict[str, str]]:
        words, corrections = [], {}
        for word in typed:
            if not self.index.knows(word) and self.index.decades.years_of(word) is None:
                fixed = self.index.corrector.correct(word)
                if fixed is not None:
                    corrections[word] = word = fixed
            words.append(word)
        return words, corrections

    def recognise(self, words: list[str]) -> Recognised:
        categories: list[int] = []
        years: tuple[int, int] | None = None
        spans, start = [], 0
        while start < len(words):
            decade = self.index.decades.years_of(words[start])
            match = None if decade is not None else \
                self.index.categories.match(words, start)
            if decade is not None:
                years = decade if years is None else (min(years[0], decade[0]),
                                                       max(years[1], decade[1]))
                spans.append((start, 1, -1))
                start += 1
            elif match is not None:
                if match[0] not in categories:
                    categories.append(match[0])
                spans.append((start, match[1], match[0]))
                start += match[1]
            else:
                start += 1
        return Recognised(tuple(categories), years, tuple(spans))

    def canonical(self, words: list[str], found: Recognised) -> list[str]:
        """The words with each category phrase as the index holds the genre's name ("scifi",
        "thrillers" -> "sci fi", "thriller")."""
        out, at = [], 0
        for start, length, column in found.spans:
            out += words[at:start]
            out += list(self.index.categories.canonical[column]) if column >= 0 \
                else words[start:start + length]
            at = start + length
        return out + words[at:]
