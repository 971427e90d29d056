from __future__ import annotations

import pytest

from recsys.search.categories import CategoryWords, Decades, alias_phrases, inflections


def test_inflections_cover_plural_and_singular() -> None:
    assert {"thriller", "thrillers"} <= inflections("thriller")
    assert "comedies" in inflections("comedy")
    assert "children" in inflections("childrens")


def test_alias_phrases_spell_a_name_spaced_joined_and_plural() -> None:
    phrases = alias_phrases("Sci-Fi")
    assert {("sci", "fi"), ("scifi",), ("sci", "fis")} <= phrases
    assert ("film", "noirs") in alias_phrases("Film-Noir")
    assert alias_phrases("!!") == set()


def test_a_phrase_two_genres_share_names_neither() -> None:
    words = CategoryWords.from_genres(("Drama", "Dramas", "Horror"), [0, 1, 2])
    assert ("dramas",) not in words.phrases  # Drama's plural and Dramas' name: ambiguous
    assert words.phrases[("horror",)] == 2


def test_only_genres_of_some_item_get_words() -> None:
    words = CategoryWords.from_genres(("Horror", "Western"), [0])
    assert ("western",) not in words.phrases


def test_match_takes_the_longest_phrase() -> None:
    words = CategoryWords.from_genres(("Sci-Fi", "Film-Noir"), [0, 1])
    assert words.match(["best", "sci", "fi", "ever"], 1) == (0, 2)
    assert words.match(["scifi"], 0) == (0, 1)
    assert words.match(["film"], 0) is None  # a part of a name names nothing


@pytest.mark.parametrize(("word", "years"), [
    ("90s", (1990, 1999)), ("1990s", (1990, 1999)), ("30s", (1930, 1939)),
    ("00s", (1900, 1909)),  # the catalogue ends in 1998: the 2000s are beyond it
    ("1995", None), ("2001", None),  # bare numbers stay text
    ("95s", None), ("horror", None)])
def test_decades_in_the_catalogue_span(word: str, years: tuple[int, int] | None) -> None:
    assert Decades(1902, 1998).years_of(word) == years


def test_two_digit_decades_take_the_latest_century_the_catalogue_reaches() -> None:
    assert Decades(1950, 2021).years_of("20s") == (2020, 2029)
    assert Decades(1950, 2021).years_of("50s") == (1950, 1959)
    assert Decades(1990, 2021).years_of("80s") is None  # before the catalogue's first year


def test_a_catalogue_without_years_recognises_no_decade() -> None:
    assert Decades().years_of("90s") is None
