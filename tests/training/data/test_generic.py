"""Generic CSV/Parquet tables and load_dataset's dispatch, with every bad-data case from files."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from recsys.errors import DataError
from training.data import SyntheticConfig, load_dataset
from training.data.generic import load_table_dataset

TINY = SyntheticConfig(n_users=30, n_items=60, n_genres=4, interactions_per_user=8, seed=3)


def _interactions() -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": ["u1", "u1", "u2", "u2", "u3"],
        "item_id": ["i1", "i2", "i1", "i3", "i2"],
        "rating": [4.0, 5.0, 3.0, 2.0, 1.0],
        "timestamp": [10, 20, 10, 30, 40],
    })


def _items() -> pd.DataFrame:
    return pd.DataFrame({
        "item_id": ["i1", "i2", "i3", "i4"],
        "title": ["One", "Two", "NA", "Four"],
        "genres": ["Action", "Comedy|Drama", "", "War"],
        "description": ["", "a film", "", ""],
    })


def _users() -> pd.DataFrame:
    return pd.DataFrame({"user_id": ["u1", "u2", "u3"], "gender": ["F", "M", "F"]})


def _write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    dataset = load_table_dataset(
        _write(_interactions(), tmp_path / f"interactions{suffix}"),
        _write(_items(), tmp_path / f"items{suffix}"),
        _write(_users(), tmp_path / f"users{suffix}"),
    )
    pd.testing.assert_frame_equal(
        dataset.interactions.astype({"user_id": object, "item_id": object}),
        _interactions().astype({"rating": "float32", "user_id": object, "item_id": object}),
    )
    assert dataset.items["title"].tolist() == ["One", "Two", "NA", "Four"]
    assert dataset.items["genres"].tolist() == ["Action", "Comedy|Drama", "", "War"]
    assert dataset.users is not None and dataset.users["gender"].tolist() == ["F", "M", "F"]
    assert dataset.name == tmp_path.name


def test_integer_ids_in_parquet_become_text(tmp_path: Path) -> None:
    frame = _interactions().assign(user_id=[1, 1, 2, 2, 3], item_id=[7, 8, 7, 9, 8])
    items = pd.DataFrame({"item_id": [7, 8, 9], "title": ["a", "b", "c"], "genres": ["", "", ""]})
    dataset = load_table_dataset(_write(frame, tmp_path / "i.parquet"),
                                 _write(items, tmp_path / "m.parquet"))
    assert dataset.interactions["item_id"].tolist() == ["7", "8", "7", "9", "8"]
    assert dataset.items["item_id"].tolist() == ["7", "8", "9"]


def test_items_table_absent_derives_titles_from_ids(tmp_path: Path) -> None:
    dataset = load_table_dataset(_write(_interactions(), tmp_path / "interactions.csv"))
    assert dataset.items["item_id"].tolist() == ["i1", "i2", "i3"]
    assert dataset.items["title"].tolist() == ["i1", "i2", "i3"]
    assert set(dataset.items["genres"]) == {""}


def _bad_csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "interactions.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("user_id,item_id,timestamp\nu,i,1\n",
         r"interactions \(.*interactions.csv\) is missing required column\(s\) \['rating'\]"),
        ("user_id,item_id,rating,timestamp\n", r"interactions \(.*\) has no rows"),
        ("user_id,item_id,rating,timestamp\nu,i,5,1\nu,j,great,2\n",
         r"column 'rating' has 1 non-numeric or missing value\(s\).*row 1 'great'"),
        ("user_id,item_id,rating,timestamp\nu,i,5,1\nu,j,,2\n",
         r"column 'rating' has 1 non-numeric or missing value\(s\).*row 1 nan"),
        ("user_id,item_id,rating,timestamp\nu,i,0,1\nu,j,-2,2\n",
         r"column 'rating' has 2 non-positive value\(s\).*row 0 0.*row 1 -2"),
        ("user_id,item_id,rating,timestamp\nu,i,5,noon\n",
         r"column 'timestamp' has 1 non-numeric.*expected integer unix seconds: row 0 'noon'"),
        ("user_id,item_id,rating,timestamp\nu,i,5,1.25\n",
         r"column 'timestamp' has 1 fractional value\(s\).*row 0 1.25"),
        ("user_id,item_id,rating,timestamp\n,i,5,1\n",
         r"column 'user_id' has 1 missing or empty id\(s\).*row 0 nan"),
    ],
)
def test_bad_interaction_files(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(DataError, match=expected):
        load_table_dataset(_bad_csv(tmp_path, text))


def test_repairs_from_files(tmp_path: Path) -> None:
    interactions = pd.concat([_interactions(), _interactions().iloc[[0]]])  # exact duplicate
    interactions = pd.concat([interactions, _interactions().iloc[[1]].assign(rating=1.0)])
    interactions = pd.concat([interactions, pd.DataFrame(
        {"user_id": ["u1"], "item_id": ["i9"], "rating": [1.0], "timestamp": [50]})])
    items = _items().assign(title=["One", None, "Three", "Four"],
                            genres=["Action |", None, "", "War"])
    users = pd.concat([_users(), pd.DataFrame({"user_id": ["ghost"], "gender": ["M"]})])
    dataset = load_table_dataset(
        _write(interactions, tmp_path / "interactions.csv"),
        _write(items, tmp_path / "items.csv"),
        _write(users, tmp_path / "users.csv"),
    )
    by_id = dataset.items.set_index("item_id")
    assert len(dataset.interactions) == 6  # 8 rows - exact duplicate - superseded (u1, i2, 20)
    assert dataset.interactions.query("item_id == 'i2' and user_id == 'u1'")["rating"].item() == 1
    assert by_id.loc["i9", "title"] == "i9"  # created for an item without metadata
    assert by_id.loc["i1", "genres"] == "Action"
    assert (by_id.loc["i2", "title"], by_id.loc["i2", "genres"]) == ("", "")
    assert "i4" in by_id.index  # cold item kept
    assert dataset.users is not None and "ghost" not in set(dataset.users["user_id"])


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "interactions.json"
    path.write_text("{}")
    with pytest.raises(DataError, match=r"unsupported suffix '.json'; expected one of .csv"):
        load_table_dataset(path)


def test_unreadable_parquet(tmp_path: Path) -> None:
    path = tmp_path / "interactions.parquet"
    path.write_text("not parquet")
    with pytest.raises(DataError, match=r"cannot read .*interactions.parquet as a parquet table"):
        load_table_dataset(path)


def test_load_dataset_none_is_synthetic() -> None:
    dataset = load_dataset(None, synthetic=TINY)
    assert dataset.name == "synthetic"
    assert dataset.interactions["user_id"].nunique() == 30


def test_load_dataset_rejects_path_and_synthetic(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both a path"):
        load_dataset(tmp_path, synthetic=TINY)


def test_load_dataset_generic_directory(tmp_path: Path) -> None:
    _write(_interactions(), tmp_path / "interactions.parquet")
    _write(_items(), tmp_path / "items.csv")
    _write(_users(), tmp_path / "users.parquet")
    dataset = load_dataset(tmp_path)
    assert len(dataset.items) == 4
    assert dataset.users is not None


def test_load_dataset_ambiguous_tables(tmp_path: Path) -> None:
    _write(_interactions(), tmp_path / "interactions.parquet")
    _write(_interactions(), tmp_path / "interactions.csv")
    with pytest.raises(DataError, match=r"several interactions tables"):
        load_dataset(tmp_path)


def test_load_dataset_file(tmp_path: Path) -> None:
    dataset = load_dataset(str(_write(_interactions(), tmp_path / "events.csv")))
    assert len(dataset.interactions) == 5


def test_load_dataset_movielens_latest_layout(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,9\n")
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n1,Film (1999),Drama\n")
    assert load_dataset(tmp_path).items["genres"].tolist() == ["Drama"]


def test_load_dataset_ml100k(ml100k_path: Path) -> None:
    assert load_dataset(ml100k_path).name == "ml-100k"


def test_load_dataset_unknown_directory_lists_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"no known dataset layout; looked for u.data .*"
                                        r"ratings.csv \+ movies.csv .*interactions"):
        load_dataset(tmp_path)


def test_load_dataset_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset path .*absent does not exist"):
        load_dataset(tmp_path / "absent")
