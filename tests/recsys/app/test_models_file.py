"""The serving models file: which BentoML model tags each alias serves; bad files named clearly."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys.app.models_file import read_models_file
from recsys.errors import ArtifactError

TAGS = {"embedding": "recsys-embedding:a", "ranker": "recsys-ranker:b",
        "fallback_ranker": "recsys-fallback-ranker:c"}


def write(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "serving-models.json"
    path.write_text(json.dumps(document))
    return path


def test_a_good_file_reads_back(tmp_path: Path) -> None:
    document = {"champion": TAGS, "challenger": TAGS}
    assert read_models_file(write(tmp_path, document)) == document


@pytest.mark.parametrize("document, message", [
    ({"challenger": TAGS}, r"no 'champion' entry \(aliases: \['challenger'\]\)"),
    ({"champion": {"embedding": "e:1"}}, r"alias 'champion' lacks \['ranker', 'fallback_ranker'\]"),
])
def test_a_bad_file_is_named_with_what_it_lacks(tmp_path: Path, document: object,
                                                message: str) -> None:
    with pytest.raises(ArtifactError, match=message):
        read_models_file(write(tmp_path, document))


def test_a_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="python -m registry export"):
        read_models_file(tmp_path / "absent.json")
