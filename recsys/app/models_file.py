"""Which models a process serves: the serving models file and each alias's bundles on disk."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from recsys.errors import ArtifactError

KINDS = ("embedding", "ranker", "fallback_ranker")
ModelTags = dict[str, dict[str, str]]  # alias -> kind -> BentoML tag


@dataclass(frozen=True)
class ModelRefs:
    """One alias's three bundles on disk and the versions they are known by."""

    alias: str
    paths: dict[str, Path]  # kind -> bundle directory
    versions: dict[str, str]  # kind -> e.g. "recsys-ranker:v3"


def read_models_file(path: Path) -> ModelTags:
    """{"champion": {"embedding": "<bentoml tag>", "ranker": ..., "fallback_ranker": ...}, ...}"""
    if not path.is_file():
        raise ArtifactError(f"models file {path} not found: run `python -m registry export` "
                            "(the README's main command does) or set RECSYS_MODELS_FILE")
    data = json.loads(path.read_text())
    for alias, kinds in data.items():
        missing = [k for k in KINDS if k not in kinds]
        if missing:
            raise ArtifactError(f"{path}: alias {alias!r} lacks {missing}")
    if "champion" not in data:
        raise ArtifactError(f"{path}: no 'champion' entry (aliases: {sorted(data)})")
    return data
