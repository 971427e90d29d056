"""MovieLens loaders: the real 100K release, and small hand-written files for the edge cases."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from recsys.errors import DataError
from training.data.movielens import (
    AGE_BUCKETS,
    age_buckets,
    load_movielens_100k,
    load_movielens_latest,
)


def _genre_names(items: pd.DataFrame) -> set[str]:
    return {g for value in items["genres"] for g in value.split("|") if g}


def test_ml100k_counts_and_schema(ml100k_path: Path) -> None:
    dataset = load_movielens_100k(ml100k_path)
    interactions = dataset.interactions
    assert dataset.name == "ml-100k"
    assert len(interactions) == 100_000
    assert interactions["user_id"].nunique() == 943
    assert len(dataset.items) == 1682
    assert interactions["item_id"].nunique() == 1682
    assert len(_genre_names(dataset.items)) == 19
    assert interactions["rating"].dtype == "float32"
    assert interactions["timestamp"].dtype == "int64"
    assert set(interactions["rating"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    toy_story = dataset.items.set_index("item_id").loc["1"]
    assert toy_story["title"] == "Toy Story (1995)"
    assert toy_story["genres"] == "Animation|Children's|Comedy"


def test_ml100k_users(ml100k_path: Path) -> None:
    users = load_movielens_100k(ml100k_path).users
    if not (ml100k_path / "u.user").is_file():
        assert users is None
        return
    assert users is not None
    assert list(users.columns) == ["user_id", "age_bucket", "gender", "occupation"]
    assert len(users) == 943
    assert set(users["age_bucket"]) <= set(AGE_BUCKETS)
    assert set(users["gender"]) == {"M", "F"}


def _write_small_100k(root: Path, *, genre_file: bool, user_file: bool) -> None:
    root.mkdir()
    (root / "u.data").write_text("1\t10\t4\t100\n1\t20\t2\t200\n2\t10\t5\t150\n")
    flags_10 = "|".join(["0", "1"] + ["0"] * 17)  # Action
    flags_20 = "|".join(["1"] + ["0"] * 17 + ["1"])  # unknown, Western
    (root / "u.item").write_bytes(
        f"10|Caf\xe9 Story (1990)|01-Jan-1990||http://x|{flags_10}\n"
        f"20|NA|||http://y|{flags_20}\n".encode("latin-1")
    )
    if genre_file:
        names = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western"]
        (root / "u.genre").write_text("".join(f"{n}|{i}\n" for i, n in enumerate(names)) + "\n")
    if user_file:
        (root / "u.user").write_text("1|17|F|student|12345\n2|56|M|retired|54321\n3|30|M|x|1\n")


@pytest.mark.parametrize("genre_file", [True, False])
def test_ml100k_small_files(tmp_path: Path, genre_file: bool) -> None:
    root = tmp_path / "ml-100k"
    _write_small_100k(root, genre_file=genre_file, user_file=True)
    dataset = load_movielens_100k(root)
    items = dataset.items.set_index("item_id")
    assert items.loc["10", "title"] == "Café Story (1990)"  # latin-1 decoded
    assert items.loc["20", "title"] == "NA"  # a title, not a missing value
    assert items.loc["10", "genres"] == "Action"
    assert items.loc["20", "genres"] == "unknown|Western"
    assert dataset.users is not None
    assert dataset.users["age_bucket"].tolist() == ["<18", "56+"]  # user 3 has no events


def test_ml100k_without_user_file(tmp_path: Path) -> None:
    root = tmp_path / "ml-100k"
    _write_small_100k(root, genre_file=False, user_file=False)
    assert load_movielens_100k(root).users is None


def test_ml100k_missing_file_is_named(tmp_path: Path) -> None:
    root = tmp_path / "ml-100k"
    root.mkdir()
    (root / "u.data").write_text("1\t10\t4\t100\n")
    with pytest.raises(DataError, match=r"has no u.item; expected .*ml-100k/u.item"):
        load_movielens_100k(root)


def test_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"directory .*nowhere does not exist.*u.data, u.item"):
        load_movielens_100k(tmp_path / "nowhere")


def test_ml100k_wrong_genre_flag_count(tmp_path: Path) -> None:
    root = tmp_path / "ml-100k"
    root.mkdir()
    (root / "u.data").write_text("1\t10\t4\t100\n")
    (root / "u.item").write_text("10|T|||u|0|1|0\n")
    with pytest.raises(DataError, match="has 3 genre flag columns, expected 19"):
        load_movielens_100k(root)


def _write_small_latest(root: Path) -> None:
    root.mkdir()
    (root / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,0.5,964981247\n2,1,5.0,1\n"
    )
    (root / "movies.csv").write_text(
        'movieId,title,genres\n1,"Toy Story, The (1995)",Adventure|Animation\n'
        "3,Grumpier Old Men (1995),(no genres listed)\n4,Cold Movie (2000),Drama\n"
    )
    (root / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,1,funny,1\n")


def test_latest_small_files(tmp_path: Path) -> None:
    root = tmp_path / "ml-latest-small"
    _write_small_latest(root)
    dataset = load_movielens_latest(root)
    assert dataset.name == "ml-latest-small"
    assert len(dataset.interactions) == 3
    assert dataset.interactions["rating"].tolist() == [4.0, 0.5, 5.0]
    items = dataset.items.set_index("item_id")
    assert items.loc["1", "title"] == "Toy Story, The (1995)"
    assert items.loc["3", "genres"] == ""
    assert "4" in items.index  # a cold item: kept
    assert dataset.users is None


def test_latest_missing_file_is_named(tmp_path: Path) -> None:
    root = tmp_path / "ml-latest"
    _write_small_latest(root)
    (root / "movies.csv").unlink()
    with pytest.raises(DataError, match=r"has no movies.csv; expected .*ml-latest/movies.csv"):
        load_movielens_latest(root)


def test_latest_bad_rating_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "ml-latest"
    _write_small_latest(root)
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,good,5\n")
    with pytest.raises(DataError, match=r"ratings.csv\) column 'rating'.*row 0 'good'"):
        load_movielens_latest(root)


def test_age_buckets_edges() -> None:
    ages = pd.Series([1, 17, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 90])
    assert age_buckets(ages).tolist() == [
        "<18", "<18", "18-24", "18-24", "25-34", "25-34", "35-44", "35-44",
        "45-49", "45-49", "50-55", "50-55", "56+", "56+",
    ]
    with pytest.raises(DataError, match="non-numeric or negative ages at rows"):
        age_buckets(pd.Series(["x"]))
