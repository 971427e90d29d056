"""download_movielens against a local HTTP server and a refused port; never the real network."""
from __future__ import annotations

import functools
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from recsys.errors import DataError
from training.cli import MOVIELENS_VARIANTS
from training.data import download_movielens, load_dataset
from training.data.download import VARIANTS, DownloadError

REFUSED = "http://127.0.0.1:9/"  # the discard port: nothing listens, the connection is refused


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy from the environment would turn 'refused locally' into a proxy error."""
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture()
def archive_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, directory it serves) for a local HTTP server on a free port."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _make_zip(path: Path, members: dict[str, str]) -> None:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, text in members.items():
            bundle.writestr(name, text)


def test_downloads_and_extracts(archive_server: tuple[str, Path], tmp_path: Path) -> None:
    base_url, served = archive_server
    _make_zip(served / "ml-100k.zip", {"ml-100k/u.data": "1\t2\t3\t4\n", "ml-100k/u.item": "x\n"})
    dest = tmp_path / "data"
    target = download_movielens("ml-100k", dest, base_url=base_url)
    assert target == dest / "ml-100k"
    assert (target / "u.data").read_text() == "1\t2\t3\t4\n"
    assert sorted(p.name for p in dest.iterdir()) == ["ml-100k"]  # no archive or scratch left


def test_archive_without_top_folder(archive_server: tuple[str, Path], tmp_path: Path) -> None:
    base_url, served = archive_server
    _make_zip(served / "ml-latest-small.zip", {"ratings.csv": "r\n", "movies.csv": "m\n"})
    target = download_movielens("ml-latest-small", tmp_path, base_url=base_url, progress=False)
    assert (target / "movies.csv").read_text() == "m\n"


def test_second_call_does_not_touch_the_network(tmp_path: Path) -> None:
    target = tmp_path / "ml-100k"
    target.mkdir()
    (target / "u.data").write_text("")
    (target / "u.item").write_text("")
    assert download_movielens("ml-100k", tmp_path, base_url=REFUSED) == target


def test_offline_message_names_files_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="appears to be offline") as caught:
        download_movielens("ml-latest-small", tmp_path, base_url=REFUSED, timeout_s=5)
    message = str(caught.value)
    assert "http://127.0.0.1:9/ml-latest-small.zip" in message
    assert "ratings.csv, movies.csv (required)" in message
    assert f"in {tmp_path / 'ml-latest-small'}/" in message
    assert not (tmp_path / "ml-latest-small").exists()


def test_http_error_is_not_called_offline(archive_server: tuple[str, Path], tmp_path: Path) -> None:
    base_url, _ = archive_server
    with pytest.raises(DownloadError, match=r"answered HTTP 404.*u.data, u.item \(required\)"):
        download_movielens("ml-100k", tmp_path, base_url=base_url, progress=False)


def test_bad_archive(archive_server: tuple[str, Path], tmp_path: Path) -> None:
    base_url, served = archive_server
    (served / "ml-100k.zip").write_text("this is not a zip")
    with pytest.raises(DownloadError, match="is not a readable zip archive"):
        download_movielens("ml-100k", tmp_path, base_url=base_url, progress=False)
    assert not (tmp_path / "ml-100k").exists()


def test_archive_missing_required_files(archive_server: tuple[str, Path], tmp_path: Path) -> None:
    base_url, served = archive_server
    _make_zip(served / "ml-100k.zip", {"ml-100k/u.data": "1\t2\t3\t4\n"})
    with pytest.raises(DownloadError, match=r"has no directory with u.data, u.item"):
        download_movielens("ml-100k", tmp_path, base_url=base_url, progress=False)


def test_unknown_variant(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown MovieLens variant 'ml-1b'; expected one of "
                                        r"ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-32m, "
                                        r"ml-latest-small, ml-latest"):
        download_movielens("ml-1b", tmp_path)


def test_the_cli_offers_every_variant() -> None:
    assert MOVIELENS_VARIANTS == tuple(VARIANTS)


def test_a_10m_archive_downloads_and_loads(archive_server: tuple[str, Path],
                                           tmp_path: Path) -> None:
    """ml-10m.zip holds its files in ml-10M100K/; they land in dest/ml-10m and load from there."""
    base_url, served = archive_server
    _make_zip(served / "ml-10m.zip", {
        "ml-10M100K/ratings.dat": "1::122::5::838985046\n1::185::4.5::838983525\n",
        "ml-10M100K/movies.dat": "122::Boomerang (1992)::Comedy|Romance\n"
                                 "185::Net, The (1995)::Action|Crime|Thriller\n",
        "ml-10M100K/tags.dat": "15::4973::excellent!::1215184630\n"})
    target = download_movielens("ml-10m", tmp_path, base_url=base_url, progress=False)
    assert target == tmp_path / "ml-10m"
    dataset = load_dataset(target)
    assert dataset.interactions["rating"].tolist() == [5.0, 4.5]
    assert dataset.items.set_index("item_id").loc["185", "title"] == "Net, The (1995)"
