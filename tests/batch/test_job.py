"""The batch job on a local Ray cluster of three one-CPU nodes (ray.cluster_utils.Cluster), run as
an operator runs it (`python -m batch --address ...`), against the fixture models in the BentoML
store: its Parquet lists are the lists the in-process pipeline computes, and the precomputed tier
it writes is what the pipeline then serves, until the user's next event or a promotion."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import redis

from devtools.processes import REPO_ROOT
from recsys.app.models_file import ModelRefs
from recsys.app.runtime import Runtime
from recsys.models.registry_client import CHAMPION
from recsys.settings import ServingSettings
from tests.support.fixtures_models import TrainedModels
from tests.support.runtime import RESULT_KEYS, Recorder, ids, recommend, serve, settings

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # after the skip: ray is an optional extra

from batch.job import select_users
from batch.scoring import ScoringSpec, score_in_process

NODES = 3  # of one CPU each: three scorers can only run on three nodes
JOB_TIMEOUT_S = 90  # the job's own wall time, actors' start-up and model loading included
# The list-shaping settings of tests/support/runtime.settings(), given to the job as the
# service's environment.
LIST_SETTINGS = {"ranking_policy": "rank_all", "ann_candidates": 300, "popular_candidates": 50,
                 "ranked_candidates": 300}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Cluster]:
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(NODES - 1):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        cluster.shutdown()


def run_job(trained_models: TrainedModels, address: str, out: Path,
            *args: str) -> dict[str, Any]:
    env = {**os.environ, "BENTOML_HOME": str(trained_models.bentoml_home),
           "RAY_USAGE_STATS_ENABLED": "0",
           **{f"RECSYS_{name.upper()}": str(value) for name, value in LIST_SETTINGS.items()}}
    command = [sys.executable, "-m", "batch", "--models-file", str(trained_models.models_file),
               "--address", address, "--k", "10", "--batch-size", "10", "--out", str(out), *args]
    done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=JOB_TIMEOUT_S, check=False)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    summary = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(summary[-1])


def lists_of(out: Path) -> dict[str, dict[str, Any]]:
    return {row["user_id"]: row for row in pq.read_table(out).to_pylist()}


def in_process(config: ServingSettings, refs: ModelRefs, users: list[str],
               recorder: Recorder | None = None) -> dict[str, dict[str, Any]]:
    """user -> /recommend's answer (default k, nothing else), from a runtime built as the
    service builds it."""
    async def scenario(runtime: Runtime) -> dict[str, dict[str, Any]]:
        return {user: await recommend(runtime, user) for user in users}
    return serve(config, [refs], scenario, recorder)


def forget_cached_results(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        for key in client.scan_iter(RESULT_KEYS):
            client.delete(key)


def test_the_job_on_three_nodes_precomputes_what_recommend_computes(
        ray_cluster: Cluster, trained_models: TrainedModels, redis_url: str,
        tmp_path: Path) -> None:
    refs = trained_models.refs(CHAMPION)
    started = time.time()
    summary = run_job(trained_models, ray_cluster.address, tmp_path / "lists", "--users", "all",
                      "--redis", redis_url)
    assert summary["nodes"] == NODES and summary["tier"] is True
    assert summary["users"] == 150 and summary["degraded"] == 0
    assert summary["model_versions"] == refs.versions

    lists = lists_of(tmp_path / "lists")
    users = sorted(lists)
    assert len(users) == 150
    row = lists[users[0]]
    assert (row["embedding_version"], row["ranker_version"], row["fallback_ranker_version"]) == \
        (refs.versions["embedding"], refs.versions["ranker"], refs.versions["fallback_ranker"])
    assert row["generation"] == 0 and row["generated_at"].timestamp() >= started - 1

    # Equal to what the in-process pipeline computes, item for item and score for score.
    config = settings(redis_url, **LIST_SETTINGS)
    computed = in_process(config, refs, users)
    assert all(answer["cache"] == "miss" for answer in computed.values())
    for user in users:
        assert lists[user]["items"] == ids(computed[user]), user
        assert lists[user]["scores"] == [i["score"] for i in computed[user]["items"]], user
        assert lists[user]["ranker"] == computed[user]["ranker"]

    # The service with the tier on answers every user from it (once their cached results are
    # gone), with the very lists it would compute.
    forget_cached_results(redis_url)
    recorder = Recorder()
    tiered = config.model_copy(update={"precomputed_tier": True})
    served = in_process(tiered, refs, users, recorder)
    assert {answer["cache"] for answer in served.values()} == {"precomputed"}
    assert all(served[u]["items"] == computed[u]["items"] for u in users)
    assert {labels["outcome"] for labels in recorder.named("precomputed")} == {"hit"}

    # An event since the batch, then a promotion: the tier is skipped, the models answer.
    forget_cached_results(redis_url)
    clicked, other = users[0], users[1]

    async def click_then_ask(runtime: Runtime) -> dict[str, dict[str, Any]]:
        await runtime.event_recorder.record_event(clicked, lists[clicked]["items"][0], "click",
                                                  time.time())
        return {user: await recommend(runtime, user) for user in (clicked, other)}

    recorder = Recorder()
    after_event = serve(tiered, [refs], click_then_ask, recorder)
    assert after_event[clicked]["cache"] == "miss"
    assert lists[clicked]["items"][0] not in ids(after_event[clicked])
    assert after_event[other]["cache"] == "precomputed"
    assert [labels["outcome"] for labels in recorder.named("precomputed")] == ["stale", "hit"]

    challenger = trained_models.refs("challenger")
    promoted = ModelRefs(CHAMPION, challenger.paths, challenger.versions)
    recorder = Recorder()
    after_promotion = in_process(tiered, promoted, [other], recorder)
    assert after_promotion[other]["cache"] == "miss"
    assert after_promotion[other]["model_versions"] == challenger.versions
    assert [labels["outcome"] for labels in recorder.named("precomputed")] == ["miss"]


def test_the_in_process_loop_and_the_users_it_is_given(trained_models: TrainedModels) -> None:
    """The benchmark's baseline: the same scorer in this process, over the most active users."""
    refs = trained_models.refs(CHAMPION)
    config = settings(None, **LIST_SETTINGS)
    spec = ScoringSpec.for_batch(refs, config, 10, None, 3600.0)
    # no client waits on the job: no list is degraded for a slow stage or a slow Redis call
    for timeout in ("tower_timeout_ms", "retrieval_timeout_ms", "ranking_timeout_ms",
                    "redis_timeout_ms"):
        served = ServingSettings.model_fields[timeout].default
        assert getattr(spec.settings, timeout) >= 100 * served
    top = select_users(spec, "top:7")
    assert top == select_users(spec, "all")[:7] and len(set(top)) == 7
    with pytest.raises(ValueError, match="'all' or 'top:N'"):
        select_users(spec, "top:none")

    table = score_in_process(spec, top, batch_size=3)
    computed = in_process(config, refs, top)
    assert table.column("user_id").to_pylist() == top
    assert table.column("items").to_pylist() == [ids(computed[u]) for u in top]
    assert len(set(table.column("scored_by").to_pylist())) == 1
