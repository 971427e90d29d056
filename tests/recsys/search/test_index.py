from __future__ import annotations

import numpy as np

from recsys.features import ItemCatalog
from recsys.search.index import SearchIndex, row_mask
from tests.support.search_catalog import GENRES, row_of


def test_years_are_parsed_from_the_titles_once(index: SearchIndex, catalog: ItemCatalog) -> None:
    assert index.years[row_of(catalog, "Toy Story")] == 1995
    assert index.years[0] == 0
    assert (index.decades.first, index.decades.last) == (1968, 2001)


def test_genre_names_and_titles_are_indexed(index: SearchIndex) -> None:
    assert {"horror", "sci", "fi", "toy", "story", "childrens"} <= set(index.vocabulary)


def test_title_has_all_reads_titles_not_genres(index: SearchIndex) -> None:
    assert index.title_has_all(["rocky", "horror"])
    assert index.title_has_all(["toy"])
    assert not index.title_has_all(["toy", "horror"])  # Toy Story is no horror title
    assert not index.title_has_all(["scream", "horror"])  # Horror is Scream's genre, not title
    assert not index.title_has_all(["unknownword"])
    assert not index.title_has_all([])


def test_row_mask(index: SearchIndex, catalog: ItemCatalog) -> None:
    horror, scifi = GENRES.index("Horror"), GENRES.index("Sci-Fi")
    both = row_mask(index, (horror, scifi), (), None)
    assert np.flatnonzero(both).tolist() == [row_of(catalog, "Alien")]
    either = row_mask(index, (), (horror, scifi), (1970, 1979))
    assert set(np.flatnonzero(either)) == {row_of(catalog, t) for t in
                                           ("Rocky Horror", "Star Wars", "Alien")}
    assert not row_mask(index, (), (), None)[0]  # the padding row never passes
