"""The suite's search phase (benchmarks/search_http.py): distinct bodies, and the phase itself at a
tiny size against the real service and the no-op floor, through wrk and recommend.lua."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import aggregate, search_http
from benchmarks.models import BenchModels
from benchmarks.phases import Session
from benchmarks.settings import BenchSettings
from recsys.search.text import normalise
from tests.support.fixtures_models import TrainedModels
from tests.support.search_catalog import GENRES, make_search_catalog

SETTINGS = BenchSettings(concurrencies=(1, 2), duration_s=1.0, warmup_s=0.5, repeats=1,
                         max_requests=150, search_bodies=1500, workers=1)


def test_every_body_is_its_own_cache_key_and_the_kinds_take_turns() -> None:
    users = [f"u{n}" for n in range(40)]
    lines, kinds = search_http.search_bodies(make_search_catalog(), users, count=400)
    bodies = [json.loads(line) for line in lines]
    keys = {(normalise(b["query"]), b.get("user_id")) for b in bodies}
    assert len(keys) == len(bodies) == sum(kinds.values()) == 400
    assert all("page_size" not in b and b["query"].strip() for b in bodies)
    # 13 titles hold few distinct windows asked without a user: that kind runs out after a
    # few dozen, and the others take its turns
    assert 0 < kinds["title"] < 100 <= min(kinds["title_typo"], kinds["title_user"],
                                           kinds["genre_user"])


def test_the_bodies_stop_when_no_distinct_key_is_left() -> None:
    lines, kinds = search_http.search_bodies(make_search_catalog(), ["u0"], count=10_000)
    assert len(lines) < 10_000 and kinds["genre_user"] == len(GENRES)


@pytest.fixture(scope="module")
def phase(trained_models: TrainedModels, tmp_path_factory: pytest.TempPathFactory
          ) -> dict[str, Any]:
    models = BenchModels(n_items=300, root=trained_models.root,
                         bentoml_home=trained_models.bentoml_home,
                         models_file=trained_models.models_file,
                         workdir=trained_models.workdirs["champion"],
                         tracking_uri=trained_models.tracking_uri, n_users=150, train_seconds=0.0)
    out = tmp_path_factory.mktemp("search-phase")
    return search_http.search(Session(out, SETTINGS), models, {models.n_items: models})


@pytest.mark.slow
def test_the_phase_measures_cache_misses_against_the_floor(phase: dict[str, Any],
                                                          tmp_path: Path) -> None:
    runs = {(r["target"], r["spec"]["connections"]): r for r in phase["runs"]}
    assert set(runs) == {(t, c) for t in search_http.TARGETS for c in (1, 2)}
    for (target, _), run in runs.items():
        assert run["requests"] > 0 and run["non_2xx"] == 0, run
        assert sum(run["socket_errors"].values()) == 0
        assert run["spec"]["path"] == "/search" and run["spec"]["k_field"] == "page_size"
        level = "miss" if target == "search-miss" else "none"
        assert run["cache_levels"] == {level: run["server_latency_ms"]["n"]}, run["cache_levels"]
    assert runs[("search-miss", 1)]["server_latency_ms"]["p50"] > 0
    assert phase["bodies"] == sum(phase["kinds"].values()) > 0
    # the second run starts past every body a thread of the first one sent
    first = runs[("search-miss", 1)]
    assert runs[("search-miss", 2)]["spec"]["offset"] >= first["extra"]["next_offset"] \
        >= first["spec"]["offset"] + first["requests"]

    curves = aggregate.points(phase["runs"])
    ratios = aggregate.search_ratios(curves, slo_ms=1000.0)
    assert ratios["at_peak"]["miss_over_noop"] > 0
    assert set(ratios["by_concurrency"]) == {1, 2}
    checks = aggregate.search_checks(curves, phase["n_items"])
    assert [c["limit"] for c in checks] == [10.0, 20.0] and all(c["value"] for c in checks)
    stages = curves["search-miss"][1]["stages"]
    assert {"search_parse", "search_bm25", "search_fusion"} <= set(stages)
    [build] = phase["builds"]  # the index of the set's own catalogue, in a child process
    assert build["items"] == 300 and build["catalogue"] == "bundle" and build["build_s"] > 0
    assert phase["build_errors"] == {}
    text = "\n".join(search_http.section(phase, {"curves": curves, "ratios": ratios}, {}))
    assert "| search-miss | 1 |" in text and "/search miss / no-op /search" in text
    assert "| 300 | bundle |" in text
