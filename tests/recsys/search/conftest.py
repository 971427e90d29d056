"""Fixtures of the search tests: a small catalogue and its index."""
from __future__ import annotations

import pytest

from recsys.features import ItemCatalog
from recsys.search.index import SearchIndex, build_search_index
from tests.support.search_catalog import make_search_catalog

TYPO_SIMILARITY = 75.0


@pytest.fixture(scope="module")
def catalog() -> ItemCatalog:
    return make_search_catalog()


@pytest.fixture(scope="module")
def index(catalog: ItemCatalog) -> SearchIndex:
    return build_search_index(catalog, TYPO_SIMILARITY)
