"""Model bundle layout on disk: the files each registered model carries, with a checksummed manifest.

A bundle is a directory. Every bundle has ``manifest.json``::

    {"kind": "embedding" | "ranker" | "fallback_ranker",
     "format_version": 1,
     "files": {"<relative path>": "<sha256 hex>", ...},
     "metadata": {...}}   # kind-specific, JSON only

Embedding bundle files: user_tower.onnx, item_tower.onnx, item_vectors.npy ([n+1, D] float32,
row 0 zeros), item_index.faiss, catalog.npz (ItemCatalog arrays), user_attributes.json, config.json.
Ranker / fallback bundle files: ranker.onnx, scaler.json, config.json; metadata records the
embedding model it was trained against (``embedding_fingerprint``).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys.errors import ArtifactError
from recsys.features import FeatureScaler, ItemCatalog, UserAttributeEncoder

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KINDS = ("embedding", "ranker", "fallback_ranker")

USER_TOWER = "user_tower.onnx"
ITEM_TOWER = "item_tower.onnx"
ITEM_VECTORS = "item_vectors.npy"
ITEM_INDEX = "item_index.faiss"
CATALOG = "catalog.npz"
USER_ATTRIBUTES = "user_attributes.json"
RANKER = "ranker.onnx"
RANKER_INT8 = "ranker_int8.onnx"  # optional: the ranker with int8 weights (CPU serving)
SCALER = "scaler.json"
CONFIG = "config.json"
USER_HISTORIES = "user_histories.npz"  # optional: known users' recent items at training time
# optional: each item's nearest other items [n+1, K] int32 (row 0 and missing slots PAD), the
# item-to-item source's answers precomputed at training
ITEM_NEIGHBOURS = "item_neighbours.npy"
PARITY = "parity.npz"  # optional: per ONNX file, sample inputs and the outputs training expects
PARITY_TOLERANCE = 1e-4

REQUIRED_FILES = {
    "embedding": (USER_TOWER, ITEM_TOWER, ITEM_VECTORS, ITEM_INDEX, CATALOG, USER_ATTRIBUTES, CONFIG),
    "ranker": (RANKER, SCALER, CONFIG),
    "fallback_ranker": (RANKER, SCALER, CONFIG),
}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    kind: str
    files: Mapping[str, str]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def fingerprint(self) -> str:
        """Stable id of the bundle: hash of the sorted file checksums and, for a ranker, of the
        embedding it was trained against and of its ranking policy. Byte-identical ranker files
        bound to two embeddings, or chosen with two policies (paths, depth), are two models to
        serve (the compatibility check reads the binding, serving follows the policy), so they
        must never share a BentoML tag or a registered version. A bundle without a policy keeps
        the id it had before policies counted."""
        lines = [f"{name}:{digest}" for name, digest in sorted(self.files.items())]
        bound = self.metadata.get("embedding_fingerprint")
        if bound:
            lines.append(f"embedding:{bound}")
        policy = self.metadata.get("ranking_policy")
        if policy:
            lines.append(f"ranking_policy:{json.dumps(policy, sort_keys=True)}")
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def write_manifest(directory: Path, kind: str, metadata: Mapping[str, Any] | None = None) -> Manifest:
    """Checksum every file under `directory` (except the manifest) and write manifest.json."""
    if kind not in KINDS:
        raise ArtifactError(f"unknown bundle kind {kind!r}; expected one of {KINDS}")
    files = {
        p.relative_to(directory).as_posix(): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    missing = [f for f in REQUIRED_FILES[kind] if f not in files]
    if missing:
        raise ArtifactError(f"{kind} bundle at {directory} is missing {missing}")
    manifest = Manifest(kind=kind, files=files, metadata=dict(metadata or {}))
    payload = {"kind": kind, "format_version": FORMAT_VERSION, "files": files,
               "metadata": manifest.metadata}
    (directory / MANIFEST).write_text(json.dumps(payload, indent=2, sort_keys=True))
    return manifest


def read_manifest(directory: Path, expected_kind: str | None = None, verify: bool = True) -> Manifest:
    """Read manifest.json; with verify, check every listed file exists with the listed checksum."""
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"no {MANIFEST} in {directory}: not a model bundle")
    manifest = parse_manifest(path.read_bytes(), str(path))
    if expected_kind is not None and manifest.kind != expected_kind:
        raise ArtifactError(f"{directory} holds a {manifest.kind!r} bundle, expected "
                            f"{expected_kind!r}")
    if verify:
        for name, digest in manifest.files.items():
            file = directory / name
            if not file.is_file():
                raise ArtifactError(f"{directory}: {name} listed in the manifest is missing")
            actual = sha256_file(file)
            if actual != digest:
                raise ArtifactError(f"{directory}: checksum mismatch for {name} "
                                    f"(manifest {digest[:12]}, file {actual[:12]})")
    return manifest


def parse_manifest(text: bytes | str, where: str = MANIFEST) -> Manifest:
    """A manifest's contents; ArtifactError for another format or a file that is not one."""
    try:
        data = json.loads(text)
        if data.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{where}: format_version {data.get('format_version')!r}, "
                                f"this code reads {FORMAT_VERSION}")
        files = data["files"]
        if not isinstance(files, dict) or any(Path(name).is_absolute() or ".." in Path(name).parts
                                              for name in files):
            raise ArtifactError(f"{where}: files must be relative paths inside the bundle")
        return Manifest(kind=data["kind"], files=files, metadata=data.get("metadata", {}))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ArtifactError(f"{where}: not a bundle manifest ({error})") from error


def save_catalog(directory: Path, catalog: ItemCatalog) -> None:
    arrays: dict[str, Any] = catalog.to_arrays()  # typed Any: savez's stub also takes allow_pickle
    np.savez(directory / CATALOG, **arrays)


def load_catalog(directory: Path) -> ItemCatalog:
    with np.load(directory / CATALOG, allow_pickle=False) as arrays:
        return ItemCatalog.from_arrays({k: arrays[k] for k in arrays.files})


def save_user_attributes(directory: Path, encoder: UserAttributeEncoder) -> None:
    payload = {name: list(values) for name, values in encoder.vocabularies.items()}
    (directory / USER_ATTRIBUTES).write_text(json.dumps(payload, indent=2))


def load_user_attributes(directory: Path) -> UserAttributeEncoder:
    data = json.loads((directory / USER_ATTRIBUTES).read_text())
    return UserAttributeEncoder({name: tuple(values) for name, values in data.items()})


@dataclass(frozen=True)
class UserHistories:
    """Known users at training time: padded recent history and every item each has seen."""

    user_ids: np.ndarray  # [U] str
    histories: np.ndarray  # [U, H] catalogue rows, 0 = pad, most recent last
    attributes: np.ndarray  # [U, A] attribute ids
    seen_indptr: np.ndarray  # [U + 1] CSR row pointers into seen_items
    seen_items: np.ndarray  # [nnz] catalogue rows, each user's sorted and unique
    last_event_times: np.ndarray | None = None  # [U] unix seconds; None in older snapshots

    def last_event_time(self, position: int) -> float | None:
        times = self.last_event_times
        return None if times is None else float(times[position])

    def seen(self, position: int) -> np.ndarray:
        return self.seen_items[self.seen_indptr[position]:self.seen_indptr[position + 1]]

    def most_active(self, count: int | None = None) -> list[str]:
        """User ids by how many items each has seen, most first (ties in snapshot order); the
        first `count` of them, or all with None."""
        order = np.argsort(-np.diff(self.seen_indptr), kind="stable")
        return [str(self.user_ids[i]) for i in order[:count]]


def save_user_histories(directory: Path, histories: UserHistories) -> None:
    arrays: dict[str, Any] = {  # typed Any: savez's stub also takes allow_pickle
        "user_ids": np.asarray(histories.user_ids, dtype=np.str_),
        **{name: getattr(histories, name).astype(np.int64)
           for name in ("histories", "attributes", "seen_indptr", "seen_items")},
        **({} if histories.last_event_times is None else
           {"last_event_times": histories.last_event_times.astype(np.float64)})}
    np.savez(directory / USER_HISTORIES, **arrays)


def load_user_histories(directory: Path) -> UserHistories | None:
    """None when the bundle has no user snapshot (every user is then served as a new user)."""
    if not (directory / USER_HISTORIES).is_file():
        return None
    with np.load(directory / USER_HISTORIES, allow_pickle=False) as arrays:
        histories = UserHistories(**{name: arrays[name] for name in arrays.files})
    return _with_sorted_seen(histories)


def _with_sorted_seen(histories: UserHistories) -> UserHistories:
    """Each user's seen rows sorted and unique, as serving's set operations take them
    (training writes them so; this guards a snapshot written otherwise)."""
    items, indptr = histories.seen_items, histories.seen_indptr
    rises = np.diff(items) > 0
    crossings = indptr[1:-1] - 1  # the steps from one user's rows to the next user's
    rises[crossings[(crossings >= 0) & (crossings < rises.size)]] = True
    if rises.all():
        return histories
    rows = [np.unique(histories.seen(u)) for u in range(len(indptr) - 1)]
    return replace(
        histories, seen_indptr=np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(
            np.int64), seen_items=np.concatenate(rows).astype(np.int64) if rows else items[:0])


def load_item_neighbours(directory: Path) -> npt.NDArray[np.int32] | None:
    """The precomputed neighbour table, memory-mapped (a replica reads only the rows of the
    items its users have seen, and processes share the pages); None when the bundle has none
    (written before it existed, or a catalogue too large for one)."""
    path = directory / ITEM_NEIGHBOURS
    if not path.is_file():
        return None
    table = np.load(path, mmap_mode="r", allow_pickle=False)
    if table.ndim != 2 or table.dtype != np.int32:
        raise ArtifactError(f"{path}: expected an int32 [items + 1, K] table, got "
                            f"{table.dtype} {table.shape}")
    return table


def save_parity(directory: Path, samples: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """ONNX file name -> {input name: array, ..., "expected": the output training checked}."""
    arrays = {f"{file}/{name}": np.asarray(value) for file, feeds in samples.items()
              for name, value in feeds.items()}
    np.savez(directory / PARITY, **arrays)  # type: ignore[arg-type]  # savez takes **arrays


def add_parity(directory: Path, samples: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """``save_parity`` keeping the samples of the bundle's other ONNX files (a model added to a
    bundle after its first files, as the search ranker to an embedding bundle)."""
    kept: dict[str, dict[str, np.ndarray]] = {}
    if (directory / PARITY).is_file():
        with np.load(directory / PARITY, allow_pickle=False) as arrays:
            for key in arrays.files:
                onnx_file, _, name = key.partition("/")
                kept.setdefault(onnx_file, {})[name] = arrays[key]
    save_parity(directory, {**kept, **samples})


def load_parity(directory: Path, onnx_file: str) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
    """(feeds, expected output) recorded for one ONNX file of the bundle; None when the bundle
    has no sample for it (bundles written before parity samples existed)."""
    if not (directory / PARITY).is_file():
        return None
    with np.load(directory / PARITY, allow_pickle=False) as arrays:
        prefix = f"{onnx_file}/"
        found = {k.removeprefix(prefix): arrays[k] for k in arrays.files if k.startswith(prefix)}
    if "expected" not in found:
        return None
    expected = found.pop("expected")
    return found, expected


def check_parity(directory: Path, onnx_file: str, actual: np.ndarray,
                 expected: np.ndarray, tolerance: float = PARITY_TOLERANCE) -> float:
    """Max absolute difference of an ONNX file's output from what training recorded;
    ArtifactError naming the file when it is above `tolerance` or of another shape."""
    if actual.shape != expected.shape:
        raise ArtifactError(f"{directory / onnx_file}: output of shape {actual.shape} on its "
                            f"parity sample, expected {expected.shape}")
    diff = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64)))) \
        if expected.size else 0.0
    if not diff <= tolerance:
        raise ArtifactError(f"{directory / onnx_file}: differs from the outputs recorded at "
                            f"training by {diff:.2e} (tolerance {tolerance:.0e})")
    return diff


def save_scaler(directory: Path, scaler: FeatureScaler) -> None:
    (directory / SCALER).write_text(json.dumps(scaler.to_dict()))


def load_scaler(directory: Path) -> FeatureScaler:
    return FeatureScaler.from_dict(json.loads((directory / SCALER).read_text()))


def save_json(path: Path, payload: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))


def load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
