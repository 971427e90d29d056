"""Fetch and unzip a MovieLens release from GroupLens, or say exactly what to put where by hand."""
from __future__ import annotations

import http.client
import logging
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from recsys.errors import DataError

logger = logging.getLogger(__name__)

GROUPLENS_BASE_URL = "https://files.grouplens.org/datasets/movielens/"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Variant:
    """A MovieLens release: the files a loader needs, and the ones it reads when present."""

    required: tuple[str, ...]
    optional: tuple[str, ...]


_CSV = Variant(("ratings.csv", "movies.csv"), ("tags.csv", "links.csv"))
# <name>.zip at GroupLens; an archive may hold its files one folder down (ml-10m.zip: ml-10M100K/)
VARIANTS: dict[str, Variant] = {
    "ml-100k": Variant(("u.data", "u.item"), ("u.genre", "u.user")),
    "ml-1m": Variant(("ratings.dat", "movies.dat"), ("users.dat",)),
    "ml-10m": Variant(("ratings.dat", "movies.dat"), ("tags.dat",)),
    "ml-20m": _CSV,
    "ml-25m": _CSV,
    "ml-32m": _CSV,
    "ml-latest-small": _CSV,
    "ml-latest": _CSV,
}


class DownloadError(DataError):
    """A MovieLens archive could not be fetched or unpacked."""


def download_movielens(
    variant: str,
    dest: Path,
    *,
    base_url: str = GROUPLENS_BASE_URL,
    timeout_s: float = 30.0,
    progress: bool = True,
) -> Path:
    """Download `<base_url><variant>.zip` and unzip it to `dest/<variant>`; returns that directory.

    Does nothing (and needs no network) when `dest/<variant>` already has the required files.
    Raises DownloadError (a DataError) when offline, naming the files to copy there by hand.
    """
    spec = _variant(variant)
    dest = Path(dest).expanduser()
    target = dest / variant
    if _complete(target, spec):
        logger.info("%s already present in %s; not downloading", variant, target)
        return target
    dest.mkdir(parents=True, exist_ok=True)
    url = f"{base_url.rstrip('/')}/{variant}.zip"
    with tempfile.TemporaryDirectory(dir=dest, prefix=f".{variant}-") as scratch:
        archive = Path(scratch) / f"{variant}.zip"
        _fetch(url, archive, variant, target, spec, timeout_s=timeout_s, progress=progress)
        unpacked = _extract(archive, Path(scratch) / "unpacked", spec, url)
        if target.exists():
            shutil.rmtree(target)  # an incomplete earlier copy: replaced as a whole
        shutil.move(str(unpacked), target)
    logger.info("downloaded %s into %s", url, target)
    return target


def _variant(variant: str) -> Variant:
    if variant not in VARIANTS:
        raise DataError(f"unknown MovieLens variant {variant!r}; expected one of "
                        f"{', '.join(VARIANTS)}")
    return VARIANTS[variant]


def _complete(directory: Path, spec: Variant) -> bool:
    return all((directory / name).is_file() for name in spec.required)


def manual_instructions(variant: str, target: Path, url: str) -> str:
    spec = _variant(variant)
    return (
        f"download {url} on a connected machine, unzip it, and put "
        f"{', '.join(spec.required)} (required) and {', '.join(spec.optional)} (optional) "
        f"in {target}/"
    )


def _fetch(
    url: str, archive: Path, variant: str, target: Path, spec: Variant, *,
    timeout_s: float, progress: bool,
) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
            with archive.open("wb") as out:
                _copy_with_progress(response, out, size, f"{variant}.zip", progress)
    except urllib.error.HTTPError as error:
        raise DownloadError(
            f"{url} answered HTTP {error.code} ({error.reason}); expected the {variant} archive. "
            f"To install it by hand: {manual_instructions(variant, target, url)}"
        ) from error
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(
            f"could not download {url} ({reason}): this machine appears to be offline. "
            f"To install {variant} by hand: {manual_instructions(variant, target, url)}"
        ) from error


def _copy_with_progress(
    source: BinaryIO, out: BinaryIO, size: int | None, label: str, progress: bool
) -> None:
    with tqdm(total=size, unit="B", unit_scale=True, desc=label, disable=not progress) as bar:
        while chunk := source.read(_CHUNK):
            out.write(chunk)
            bar.update(len(chunk))


def _extract(archive: Path, into: Path, spec: Variant, url: str) -> Path:
    """Unzip and return the directory holding the required files (the archive root or one level)."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(into)  # extractall drops absolute paths and '..' components
    except (zipfile.BadZipFile, OSError) as error:
        raise DownloadError(f"{url} is not a readable zip archive ({error}); expected a "
                            f"MovieLens archive with {', '.join(spec.required)}") from error
    for directory in (into, *sorted(p for p in into.iterdir() if p.is_dir())):
        if _complete(directory, spec):
            return directory
    raise DownloadError(f"the archive from {url} has no directory with "
                        f"{', '.join(spec.required)}; expected a MovieLens archive")
