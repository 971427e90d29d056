"""End to end: the chaos suite (benchmarks/chaos.py) reduced to three faults under a short mixed
load (/recommend, /events, /similar_items, /rank from Zipf users) against a real `bentoml serve`
in the services topology with two API workers and a durable Redis behind a latency proxy:

- Redis SIGKILLed for a few seconds and restarted on its append-only file;
- the ranker service slowed past its timeout (stopped 900 ms of every second);
- one API worker SIGKILLed (BentoML's supervisor starts another);
- on a second server, which follows a tracking server over a copy of the session's registry
  (the inline topology), a promotion of the challenger and the rollback through the service's
  POST /admin/rollback.

Every fault: no request fails (but those on the connections of a worker as it is killed: no
process is left to answer them), no accepted event is lost, full quality is back within a bound
after the fault (after a promotion or a rollback: every answer names the new models), and the
system is as it was. Breakers and degraded results last a second here
(RECSYS_BREAKER_RESET_S, RECSYS_DEGRADED_TTL_S) instead of 10 and 5 s, to keep the run short.
A 20-second soak (benchmarks/soak.py) then runs on the same server: the full 20 minutes is a
command, `python -m benchmarks.soak`.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from benchmarks import chaos_report, soak
from benchmarks.chaos import Timing, all_faults, run
from benchmarks.chaos_faults import served_tags
from benchmarks.chaos_load import LoadShape
from benchmarks.chaos_rig import REGISTRY_OPTIONS, ChaosRig, RigOptions
from benchmarks.models import BenchModels
from registry import Registry
from tests.support.fixtures_models import TrainedModels

pytestmark = pytest.mark.slow

FAULTS = ("redis-kill", "ranker-slow", "api-worker-kill")
TIMING = Timing(before_s=2.0, during_s=3.0, after_s=8.0)
LOAD = LoadShape(concurrency=4, rate=40.0)
SOAK_MINUTES = 20 / 60
RECOVERY_BOUND_S = 6.0  # breaker reset (1 s) + degraded TTL (1 s) + a busy machine's margin
OPTIONS = RigOptions(shadow_fraction=0.0, extra_env={"RECSYS_BREAKER_RESET_S": "1",
                                                     "RECSYS_DEGRADED_TTL_S": "1"})
MODEL_FAULTS = ("promotion", "rollback")
# A poll a second and 50 users cached before a swap: every worker serves the new set within a
# few seconds, inside the fault's 11 s (held + after) less the 2 s that recovery must hold.
REGISTRY = replace(REGISTRY_OPTIONS, registry_poll_s=1.0,
                   extra_env={**OPTIONS.extra_env, "RECSYS_WARM_USERS": "50"})


def bench_models(models: TrainedModels) -> BenchModels:
    """The session's trained champion as the benchmarks' model set."""
    return BenchModels(n_items=0, root=models.root, bentoml_home=models.bentoml_home,
                       models_file=models.models_file, workdir=models.workdirs["champion"],
                       tracking_uri=models.tracking_uri, n_users=0, train_seconds=0.0)


@pytest.fixture(scope="module")
def rig(trained_models: TrainedModels,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosRig]:
    with ChaosRig(bench_models(trained_models), tmp_path_factory.mktemp("chaos"), OPTIONS) as rig:
        yield rig


@pytest.fixture(scope="module")
def chaos(rig: ChaosRig) -> dict[str, Any]:
    faults = [f for f in all_faults(rig, TIMING) if f.name in FAULTS]
    return run(rig, faults, LOAD, TIMING, rig.out, warmup_s=2.0)


def summary(result: dict[str, Any]) -> str:
    """One fault's figures, for the log of the run."""
    every = result["phases"]["all"]
    return (f"{result['fault']}: sent {every['sent']}, failed {every['failed']}, degraded "
            f"{every['degraded']} {every['degraded_by']}, events {result['events']}, recovery "
            f"{result['recovery_s']} s, p99 during {result['phases']['during']['p99_ms']} ms")


@pytest.fixture(scope="module")
def results(chaos: dict[str, Any]) -> dict[str, dict[str, Any]]:
    by_name = {r["fault"]: r for r in chaos["faults"]}
    for r in chaos["faults"]:
        print(f"\n{summary(r)}, {r['failed_in_flight']} failed in flight")
    assert sorted(by_name) == sorted(FAULTS), by_name.keys()
    return by_name


@pytest.mark.parametrize("fault", FAULTS)
def test_no_request_fails(results: dict[str, dict[str, Any]], fault: str) -> None:
    result = results[fault]
    failed = result["phases"]["all"]["failed"]
    if fault == "api-worker-kill":  # the killed worker's own connections, and only those
        assert failed == result["failed_in_flight"], result["phases"]["all"]["failed_by"]
    else:
        assert failed == 0, result["phases"]["all"]["failed_by"]


@pytest.mark.parametrize("fault", FAULTS)
def test_no_accepted_event_is_lost(results: dict[str, dict[str, Any]], fault: str) -> None:
    events = results[fault]["events"]

    assert events["accepted"] > 0 and events["lost"] == 0, events


def test_every_event_of_the_run_is_kept(chaos: dict[str, Any]) -> None:
    assert chaos["events_total"]["lost"] == 0, chaos["events_total"]


@pytest.mark.parametrize("fault", FAULTS)
def test_full_quality_comes_back_and_the_system_is_restored(results: dict[str, dict[str, Any]],
                                                            fault: str) -> None:
    result = results[fault]

    assert result["restored"]["ok"], result["restored"]
    assert result["recovery_s"] is not None and result["recovery_s"] <= RECOVERY_BOUND_S, \
        result["timeline"]


def test_the_faults_were_felt(results: dict[str, dict[str, Any]]) -> None:
    """Each fault did something the service had to absorb, or the test proves nothing."""
    assert results["redis-kill"]["events"]["refused_503"] > 0
    assert "history_unavailable" in results["redis-kill"]["phases"]["during"]["degraded_by"]
    ranker = results["ranker-slow"]["phases"]["during"]["degraded_by"]
    assert {"ranker_timeout", "ranker_circuit_open"} & set(ranker), ranker
    assert results["api-worker-kill"]["notes"]["respawned_after_s"] is not None


def test_the_report_renders(chaos: dict[str, Any], rig: ChaosRig) -> None:
    table = chaos_report.table(chaos["faults"])

    assert all(f"| {fault} |" in table for fault in FAULTS)
    assert all((rig.out / f"{fault}.png").is_file() for fault in FAULTS)


def test_a_short_soak_samples_every_process_and_renders(chaos: dict[str, Any], rig: ChaosRig,
                                                        tmp_path: Path) -> None:
    """benchmarks/soak.py for a few seconds on the same server (after the faults)."""
    points, totals = soak.soak(rig, replace(LOAD, new_users=0.1), SOAK_MINUTES, 5.0)

    assert totals["requests"] > 0 and totals["failed"] == 0, totals
    assert len(points) == 4
    summary = soak.summary(points)
    services = {key.split(":")[0] for key in summary["processes"]}
    assert {"recommender", "RankerService", "UserTowerService"} <= services, services
    assert summary["redis"]["end"]["keys"] > 0
    report = {"meta": {"started": "now", "minutes": SOAK_MINUTES, "load": "test",
                       "server": "test", "load_average_start": [], "load_average_end": []},
              "summary": summary, "totals": totals, "histories": {}, "points": points}
    assert "| recommender:" in soak.markdown(report)
    assert (tmp_path / soak.plot(points, tmp_path / "soak.png")).is_file()


@pytest.fixture(scope="module")
def model_moves(trained_models: TrainedModels,
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The promotion and the rollback under the same load on a server that follows the
    registry; the server is stopped once they have run. Also: the tags each set answers with."""
    out = tmp_path_factory.mktemp("chaos-registry")
    with ChaosRig(bench_models(trained_models), out, REGISTRY) as rig:
        assert rig.registry is not None
        registry = Registry(rig.registry.url)
        champion, challenger = (served_tags(registry, s) for s in rig.model_sets())
        chaos = run(rig, all_faults(rig, TIMING), LOAD, TIMING, out, warmup_s=2.0)
    for r in chaos["faults"]:
        print(f"\n{summary(r)} (recovery from the alias move), models {r.get('models')}")
    return {"champion": champion, "challenger": challenger, "out": out,
            "events_total": chaos["events_total"],
            "by_name": {r["fault"]: r for r in chaos["faults"]}}


@pytest.mark.parametrize("fault", MODEL_FAULTS)
def test_a_promotion_and_a_rollback_fail_no_request_and_lose_no_event(
        model_moves: dict[str, Any], fault: str) -> None:
    result = model_moves["by_name"][fault]

    assert result["phases"]["all"]["failed"] == 0, result["phases"]["all"]["failed_by"]
    assert result["events"]["accepted"] > 0 and result["events"]["lost"] == 0, result["events"]
    assert result["restored"]["ok"], result["restored"]
    assert model_moves["events_total"]["lost"] == 0, model_moves["events_total"]


def test_every_answer_names_the_promoted_then_the_restored_models_within_the_window(
        model_moves: dict[str, Any]) -> None:
    promotion, rollback = (model_moves["by_name"][name] for name in MODEL_FAULTS)

    assert promotion["notes"]["promoted"] == model_moves["challenger"]
    assert rollback["notes"]["rolled_back_to"] == model_moves["champion"]
    for result in (promotion, rollback):
        assert result["recovery_s"] is not None, result["timeline"]  # and held 2 s in the window
        assert result["models"]["sets_answering"] == 2, result["models"]  # old, new: none mixed
    assert "| promotion |" in chaos_report.table([promotion, rollback])
    assert (model_moves["out"] / "rollback.png").is_file()
