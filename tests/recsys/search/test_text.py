from __future__ import annotations

import pytest

from recsys.search.text import normalise, title_year, tokenize


@pytest.mark.parametrize(("text", "expected"), [
    ("Toy Story", "toy story"),
    ("  AMÉLIE  ", "amelie"),  # case and accents
    ("Sci-Fi!!", "sci fi"),  # punctuation is a word break
    ("Schindler's List", "schindlers list"),  # apostrophes join the word
    ("Schindler’s  List", "schindlers list"),  # a typographic apostrophe too
    ("2001: A Space Odyssey", "2001 a space odyssey"),
    ("'90s", "90s"),
    ("Straße", "strasse"),  # case folding, not only lower case
    ("!!!", ""),
])
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected


def test_tokenize_gives_the_normalised_words() -> None:
    assert tokenize("Shawshank Redemption, The (1994)") == ["shawshank", "redemption", "the",
                                                            "1994"]
    assert tokenize(" \t ") == []


@pytest.mark.parametrize(("title", "year"), [
    ("Toy Story (1995)", 1995), ("Heat (1995) ", 1995), ("2001: A Space Odyssey", 0),
    ("City of Lost Children, The (Cité des enfants perdus, La) (1995)", 1995),
    ("Untitled (19xx)", 0)])
def test_title_year_reads_a_trailing_year_only(title: str, year: int) -> None:
    assert title_year(title) == year
