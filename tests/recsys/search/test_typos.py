from __future__ import annotations

import pytest

from recsys.search.typos import TypoCorrector, trigrams

WORDS = ["horror", "honor", "story", "stormy", "redemption", "shawshank", "space"]


@pytest.fixture(scope="module")
def corrector() -> TypoCorrector:
    return TypoCorrector(WORDS, [5, 1, 9, 1, 1, 1, 2], similarity=75.0)


def test_trigrams_mark_the_word_ends() -> None:
    assert trigrams("ab") == {"^ab", "ab$"}


@pytest.mark.parametrize(("typed", "read"), [
    ("horor", "horror"), ("storry", "story"), ("redemtpion", "redemption"),
    ("shawshenk", "shawshank"), ("spaec", "space")])
def test_one_edit_is_read_as_the_closest_word(corrector: TypoCorrector, typed: str,
                                              read: str) -> None:
    assert corrector.correct(typed) == read


def test_nothing_close_enough_stays_uncorrected(corrector: TypoCorrector) -> None:
    assert corrector.correct("zebra") is None


def test_the_similarity_threshold_decides() -> None:
    strict = TypoCorrector(WORDS, [1] * len(WORDS), similarity=95.0)
    assert strict.correct("horor") is None  # ratio 90.9
    assert TypoCorrector(WORDS, [1] * len(WORDS), similarity=90.0).correct("horor") == "horror"


def test_numbers_and_short_words_are_never_corrected(corrector: TypoCorrector) -> None:
    assert corrector.correct("2002") is None
    assert corrector.correct("ho") is None


def test_ties_go_to_the_word_in_more_documents() -> None:
    assert TypoCorrector(["cats", "cars"], [1, 7], 70.0).correct("cafs") == "cars"
    assert TypoCorrector(["cats", "cars"], [7, 1], 70.0).correct("cafs") == "cats"


def test_a_bad_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="similarity"):
        TypoCorrector(WORDS, [1] * len(WORDS), similarity=101.0)
