"""The one tokeniser of search, for the index and for queries alike: normalised words."""
from __future__ import annotations

import re
import unicodedata

_APOSTROPHES = re.compile(r"['\u2019\u2018`\u00b4]")  # dropped inside words: "schindler's"
_NOT_WORD = re.compile(r"[\W_]+")
# MovieLens and many catalogues end a title with its year: "Toy Story (1995)"
_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")


def normalise(text: str) -> str:
    """Case folded, accents dropped (NFKD, combining marks removed), apostrophes dropped, every
    other run of non-word characters one space: "Amélie's  SCI-FI!" -> "amelies sci fi"."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(_NOT_WORD.sub(" ", _APOSTROPHES.sub("", plain)).split())


def tokenize(text: str) -> list[str]:
    """The words of normalise(text), in order; [] for text without any."""
    return normalise(text).split()


def title_year(title: str) -> int:
    """The year a title ends with in parentheses ("Heat (1995)" -> 1995); 0 when it has none."""
    match = _TITLE_YEAR.search(title)
    return int(match.group(1)) if match else 0
