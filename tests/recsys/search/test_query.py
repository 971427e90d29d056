from __future__ import annotations

import pytest

from recsys.features import ItemCatalog
from recsys.search.index import SearchIndex
from recsys.search.query import QueryParser
from tests.support.search_catalog import GENRES


@pytest.fixture(scope="module")
def parser(index: SearchIndex) -> QueryParser:
    return QueryParser(index)


def names(columns: tuple[int, ...]) -> list[str]:
    return [GENRES[c] for c in columns]


def test_a_category_word_alone_is_a_filter(parser: QueryParser) -> None:
    query = parser.parse("Horror")
    assert names(query.categories) == ["Horror"]
    assert query.words == ("horror",)  # the original text is kept for scoring
    assert query.understood


@pytest.mark.parametrize("text", ["sci fi", "Sci-Fi", "scifi", "SCI-FIs"])
def test_the_ways_of_writing_a_category(parser: QueryParser, text: str) -> None:
    query = parser.parse(text)
    assert names(query.categories) == ["Sci-Fi"]
    assert query.words == ("sci", "fi")  # as the index holds the genre's name


def test_plural_category_words(parser: QueryParser) -> None:
    assert names(parser.parse("thrillers").categories) == ["Thriller"]
    assert names(parser.parse("comedies").categories) == ["Comedy"]


def test_a_category_word_inside_a_title_is_text(parser: QueryParser) -> None:
    for text in ("rocky horror", "star wars"):
        query = parser.parse(text)
        assert query.categories == () and query.years is None, text


def test_a_category_word_beside_words_of_no_title_is_a_filter(parser: QueryParser) -> None:
    query = parser.parse("scary horror")
    assert names(query.categories) == ["Horror"]
    assert query.words == ("scary", "horror")


def test_decades_become_a_year_range(parser: QueryParser) -> None:
    query = parser.parse("90s horror")
    assert query.years == (1990, 1999) and names(query.categories) == ["Horror"]
    assert parser.parse("1970s").years == (1970, 1979)


def test_bare_numbers_stay_text(parser: QueryParser) -> None:
    query = parser.parse("2001")
    assert query.years is None and query.words == ("2001",) and query.understood


def test_typos_are_corrected_against_the_titles_words(parser: QueryParser) -> None:
    query = parser.parse("Shawshenk redemtion")
    assert query.words == ("shawshank", "redemption")
    assert query.corrections == {"shawshenk": "shawshank", "redemtion": "redemption"}


def test_a_typo_of_a_category_word_is_a_category(parser: QueryParser) -> None:
    query = parser.parse("horor")
    assert query.corrections == {"horor": "horror"}
    assert names(query.categories) == ["Horror"]


def test_a_genre_no_item_has_is_not_recognised(parser: QueryParser) -> None:
    assert parser.parse("western").categories == ()


def test_a_query_of_unknown_words_is_not_understood(parser: QueryParser) -> None:
    query = parser.parse("qqqzzz xyxyxy")
    assert not query.understood and query.corrections == {}
    assert not parser.parse("!!!").understood


def test_accents_and_apostrophes_match_the_index(parser: QueryParser,
                                                 catalog: ItemCatalog) -> None:
    assert parser.parse("AMELIE").words == ("amelie",)
    assert parser.parse("schindler's").words == ("schindlers",)
    assert parser.parse("amelie").understood
