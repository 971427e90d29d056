"""`python -m registry`: tables for people, exit codes, and BENTOML_HOME in a real subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.processes import REPO_ROOT
from recsys.models import artifacts
from registry import (
    CHAMPION,
    EMBEDDING_MODEL,
    FALLBACK_MODEL,
    RANKER_MODEL,
    ModelSet,
    Registry,
    register_model_set,
)
from registry.cli import format_table, main
from tests.support.bundle_factory import log_model_set, tracking_store

# See tests/registry/test_bento_export.py: bentoml 1.4.39 trips a pathspec deprecation on first import.
pytestmark = pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")



@dataclass(frozen=True)
class Store:
    uri: str
    root: Path
    first: ModelSet  # registered first (challenger at the start)
    second: ModelSet  # registered second, tagged but without alias


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """Default model names (the CLI has no name option) in a store private to this module."""
    root = tmp_path_factory.mktemp("registry-cli")
    with tracking_store(root) as uri:
        sets = []
        for seed, alias in ((0, "challenger"), (1, None)):
            uris = log_model_set(root / f"set{seed}", seed=seed)
            sets.append(register_model_set(uris["embedding"], uris["ranker"],
                                           uris["fallback_ranker"], alias=alias))
        yield Store(uri, root, *sets)


def _run(store: Store, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["--tracking-uri", store.uri, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_format_table_aligns_columns() -> None:
    assert format_table(["A", "LONG"], [["xx", 1], ["y", 22]]).splitlines() == [
        "A   LONG", "--  ----", "xx  1", "y   22"]


def test_promote_rollback_cycle(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(store, capsys, "list")
    assert code == 0
    header, _rule, *rows = out.splitlines()
    assert header.split()[:3] == ["MODEL", "VERSION", "ALIASES"]
    assert {tuple(row.split()[:3]) for row in rows} == {
        (name, "1", "challenger") for name in (EMBEDDING_MODEL, RANKER_MODEL, FALLBACK_MODEL)
    } | {(name, "2", "-") for name in (EMBEDDING_MODEL, RANKER_MODEL, FALLBACK_MODEL)}

    code, _, err = _run(store, capsys, "rollback")
    assert code == 1 and "nothing to roll back" in err

    code, out, _ = _run(store, capsys, "promote")
    assert code == 0 and "promoted 'challenger' to 'champion'" in out
    code, out, _ = _run(store, capsys, "show", "--alias", CHAMPION)
    assert code == 0
    assert {row.split()[1]: row.split()[2] for row in out.splitlines()[3:]} == {
        EMBEDDING_MODEL: "1", RANKER_MODEL: "1", FALLBACK_MODEL: "1"}

    Registry(store.uri).set_aliases(store.second, "candidate")
    code, out, _ = _run(store, capsys, "promote", "--from", "candidate")
    assert code == 0 and "WAS" in out
    assert Registry(store.uri).resolve(CHAMPION) == store.second

    code, out, _ = _run(store, capsys, "rollback")
    assert code == 0 and "previous champion" in out
    assert Registry(store.uri).resolve(CHAMPION) == store.first
    assert Registry(store.uri).resolve("previous_champion") == store.second


def test_incompatible_promotion_fails_with_message(store: Store,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    registry = Registry(store.uri)
    mixed = ModelSet(store.second.embedding, store.first.ranker, store.first.fallback)
    registry.set_aliases(mixed, "mixed")

    code, _, err = _run(store, capsys, "promote", "--from", "mixed")

    assert code == 1
    assert f"{RANKER_MODEL} version {store.first.ranker}" in err
    assert f"not version {store.second.embedding}" in err


def test_show_missing_alias_names_it(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(store, capsys, "show", "--alias", "nope")
    assert code == 1 and "alias 'nope' is not set" in err and EMBEDDING_MODEL in err


def test_tracking_uri_from_environment(store: Store, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    assert main(["list"]) == 0
    assert EMBEDDING_MODEL in capsys.readouterr().out


def test_export_into_bentoml_home(store: Store, capsys: pytest.CaptureFixture[str],
                                  tmp_path: Path) -> None:
    Registry(store.uri).set_aliases(store.first, "exported")
    code, out, _ = _run(store, capsys, "export", "--alias", "exported",
                        "--bentoml-home", str(tmp_path))
    assert code == 0
    assert f"{RANKER_MODEL}:v{store.first.ranker}-" in out
    (stored,) = (tmp_path / "models" / RANKER_MODEL).glob(f"v{store.first.ranker}-*")
    artifacts.read_manifest(stored, expected_kind="ranker", verify=True)


def test_export_subprocess_honours_bentoml_home_env(store: Store, tmp_path: Path) -> None:
    """A fresh process reads BENTOML_HOME itself: the deployment path, end to end."""
    Registry(store.uri).set_aliases(store.second, "shipped")
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"),
           "MLFLOW_TRACKING_URI": store.uri, "BENTOML_DO_NOT_TRACK": "true",
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    result = subprocess.run([sys.executable, "-m", "registry", "export", "--alias", "shipped"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert f"{EMBEDDING_MODEL}:v{store.second.embedding}-" in result.stdout
    (stored,) = (tmp_path / "home" / "models" / EMBEDDING_MODEL).glob(f"v{store.second.embedding}-*")
    artifacts.read_manifest(stored, expected_kind="embedding", verify=True)
