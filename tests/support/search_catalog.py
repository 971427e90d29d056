"""A small catalogue with MovieLens-style titles (trailing year) and genres, for search tests."""
from __future__ import annotations

import numpy as np

from recsys.features import ItemCatalog, tokenize_title

GENRES = ("Action", "Animation", "Children's", "Comedy", "Crime", "Drama", "Horror", "Musical",
          "Romance", "Sci-Fi", "Thriller", "War", "Western")  # no item is a Western
ITEMS = (
    ("Toy Story (1995)", ("Animation", "Children's", "Comedy")),
    ("Rocky Horror Picture Show, The (1975)", ("Comedy", "Horror", "Musical")),
    ("Scream (1996)", ("Horror", "Thriller")),
    ("Star Wars (1977)", ("Action", "Sci-Fi", "War")),
    ("2001: A Space Odyssey (1968)", ("Drama", "Sci-Fi")),
    ("Amélie (2001)", ("Comedy", "Romance")),
    ("Schindler's List (1993)", ("Drama", "War")),
    ("Alien (1979)", ("Horror", "Sci-Fi")),
    ("Blade Runner (1982)", ("Sci-Fi", "Thriller")),
    ("Shawshank Redemption, The (1994)", ("Drama",)),
    ("Nightmare on Elm Street, A (1984)", ("Horror",)),
    ("Heat (1995)", ("Action", "Crime")),
    ("Toy Soldiers (1991)", ("Action", "Drama")),
)


def make_search_catalog() -> ItemCatalog:
    n = len(ITEMS)
    genres = np.zeros((n + 1, len(GENRES)), dtype=np.float32)
    for row, (_, names) in enumerate(ITEMS, 1):
        genres[row, [GENRES.index(g) for g in names]] = 1.0
    titles = [""] + [title for title, _ in ITEMS]
    return ItemCatalog(
        item_ids=np.array([""] + [f"m{i}" for i in range(1, n + 1)], dtype=np.str_),
        titles=np.array(titles, dtype=np.str_), genre_vocab=GENRES, genres=genres,
        title_tokens=np.stack([tokenize_title(t, 64, 4) for t in titles]),
        popularity=np.asarray([0] + list(range(n, 0, -1)), dtype=np.float32),  # row 1 most
        novelty=np.zeros(n + 1, dtype=np.float32))


def row_of(catalog: ItemCatalog, title_start: str) -> int:
    return next(i for i, t in enumerate(catalog.titles) if i and str(t).startswith(title_start))

