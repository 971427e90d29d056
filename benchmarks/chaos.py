"""The chaos suite: one fault at a time under a bounded mixed load against a real `bentoml
serve`, with what each did to requests, latency and events, and how long recovery took.

    python -m benchmarks.chaos                         # every fault, reports/chaos/ (~12 min)
    python -m benchmarks.chaos --faults redis-kill,ranker-slow --after 15
    python -m benchmarks.chaos --faults promotion,rollback

The server runs the services topology (user tower and ranker in their own BentoML services)
with two API workers, on a durable Redis (append-only file, appendfsync everysec) reached
through a latency proxy, shadow scoring on with its log on a small tmpfs. The promotion and the
rollback run on a second server that follows an MLflow tracking server (the inline topology,
what following the registry serves), between the benchmark's champion and a second set trained
beside it. The faults, the figures and what they mean: the README's "Reliability under faults".
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from benchmarks import chaos_report, promtext
from benchmarks.chaos_faults import (
    CpuHog,
    DiskFull,
    Fault,
    ProcessKill,
    ProcessThrottle,
    Promotion,
    RedisKill,
    RedisLatency,
    RedisOutOfMemory,
    RedisPausedWrites,
    Rollback,
)
from benchmarks.chaos_load import LoadShape, MixedLoad, Sample, versions_key
from benchmarks.chaos_rig import REGISTRY_OPTIONS, ChaosRig, RigOptions, load_average
from benchmarks.models import BenchModels, code_fingerprint, ensure_challenger, ensure_models
from devtools.processes import QUIET_ENV, REPO_ROOT
from registry import Registry

RESTORE_TIMEOUT_S = 60.0
METRIC_FAMILIES = ("recsys_fallbacks_total", "recsys_redis_errors_total", "recsys_shadow_total",
                   "recsys_model_swaps_total", "recsys_model_load_failures_total")
REGISTRY_FAULTS = ("promotion", "rollback")  # on the server that follows the registry
SCRAPE_TRIES = 3


@dataclass(frozen=True)
class Timing:
    before_s: float = 8.0
    during_s: float = 10.0  # for faults that are held; a killed process ends with its respawn
    after_s: float = 25.0  # breakers stay open 10 s (RECSYS_BREAKER_RESET_S), degraded results
    # are cached 5 s (RECSYS_DEGRADED_TTL_S): recovery can take ~15 s by design


def all_faults(rig: ChaosRig, timing: Timing) -> list[Fault]:
    """The faults this rig's server can take: the promotion and the rollback when it follows the
    registry, every other fault otherwise."""
    assert rig.server is not None
    if rig.registry is not None:
        return [Promotion(Registry(rig.registry.url), rig.model_sets()),
                Rollback(rig.server.url, rig.admin_token)]
    root, ranking = rig.server.pid, rig.options.timeouts_ms[2]
    faults: list[Fault] = [
        RedisKill(rig.redis),
        *([RedisLatency(rig.proxy, 5.0), RedisLatency(rig.proxy, 50.0)] if rig.proxy else []),
        RedisOutOfMemory(rig.redis.url),
        RedisPausedWrites(rig.redis.url, timing.during_s),
        ProcessKill(root, "RankerService", "ranker-kill",
                    "the ranker service's process SIGKILLed; BentoML's supervisor restarts it"),
        ProcessKill(root, "UserTowerService", "user-tower-kill",
                    "the user tower service's process SIGKILLed; BentoML's supervisor restarts it"),
        ProcessThrottle(root, "RankerService", "ranker-slow",
                        "the ranker service stopped (SIGSTOP) 900 ms of every second: a call "
                        f"waits up to 900 ms, past the {ranking:g} ms ranking timeout for "
                        f"{max(0.0, (900 - ranking) / 1000):.0%} of calls"),
        ProcessKill(root, "recommender", "api-worker-kill",
                    "the API worker holding most client connections SIGKILLed (of two); the "
                    "supervisor restarts it", port=rig.server.port),
        CpuHog(),
    ]
    if rig.mounted:
        faults.append(DiskFull(rig.shadow_dir))
    return faults


def renamed(faults: list[Fault], suffix: str) -> list[Fault]:
    for fault in faults:
        fault.name += suffix
    return faults


@dataclass(frozen=True)
class NotScraped:
    """/metrics did not answer 200 in SCRAPE_TRIES tries: what it did instead."""

    problem: str


def scrape(url: str) -> str | NotScraped:
    """The server's /metrics text, tried SCRAPE_TRIES times a second apart."""
    problem = ""
    for _ in range(SCRAPE_TRIES):
        try:
            response = httpx.get(f"{url}/metrics", timeout=10)
        except httpx.HTTPError as error:
            problem = repr(error)
        else:
            if response.status_code == 200:
                return response.text
            problem = f"{response.status_code}: {response.text[:200]}"
        time.sleep(1.0)
    return NotScraped(problem)


def metric_changes(before: str | NotScraped, after: str | NotScraped) -> dict[str, Any]:
    """Increments of the degradation counters between two scrapes, by series (or why there
    are none)."""
    if isinstance(before, NotScraped):
        return {"not_scraped": before.problem}
    if isinstance(after, NotScraped):
        return {"not_scraped": after.problem}
    out: dict[str, Any] = {}
    for (name, labels), value in promtext.delta(before, after).items():
        if name in METRIC_FAMILIES and value:
            series = ",".join(f"{k}={v}" for k, v in labels)
            out[f"{name}{{{series}}}"] = value
    return out


def wait_restored(rig: ChaosRig) -> dict[str, Any]:
    deadline = time.monotonic() + RESTORE_TIMEOUT_S
    while True:
        checks = rig.restored()
        if checks["ok"] or time.monotonic() > deadline:
            return checks
        time.sleep(1.0)


def run_fault(rig: ChaosRig, load: MixedLoad, fault: Fault, timing: Timing, out: Path,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """before, begin, during (or until a killed process is replaced), end, after; then the
    figures of that window, the events' fate and the restore check."""
    assert rig.server is not None
    metrics_before = scrape(rig.server.url)
    load_at_start = load_average()
    t0 = time.monotonic()
    time.sleep(timing.before_s)
    log(f"  {fault.name}: begin")
    t1 = time.monotonic()
    try:
        fault.begin()
        if not isinstance(fault, ProcessKill):  # a change of models: held to watch it spread
            time.sleep(timing.during_s)
    finally:  # whatever happened, the fault is lifted (the restore check says if it was not)
        fault.end()
    t2 = time.monotonic()
    log(f"  {fault.name}: ended after {t2 - t1:.1f} s")
    versions = versions_key(fault.versions) if isinstance(fault, Promotion | Rollback) else None
    time.sleep(timing.after_s)
    t3 = time.monotonic()
    restored = wait_restored(rig)
    window = chaos_report.Window(t0, t1, t2, t3)
    samples = list(load.samples)
    users = {s.user for s in window.phase(samples, "all") if s.endpoint == "/events"}
    notes = {**fault.notes, "load_average": load_at_start,
             "metrics": metric_changes(metrics_before, scrape(rig.server.url))}
    result = chaos_report.fault_result(fault.name, fault.description, samples, window,
                                       rig.stored_events(users), notes, out, versions)
    result["restored"] = restored
    every = result["phases"]["all"]
    log(f"  {fault.name}: sent {every['sent']}, failed {every['failed']}, degraded "
        f"{every['degraded']}, events lost {result['events']['lost']}, recovery "
        f"{result['recovery_s']} s, restored {restored['ok']}"
        + (f", models {result['models']}" if versions is not None else ""))
    return result


def chaos_models(models_dir: Path | None, items: int, users: int, logs: Path) -> BenchModels:
    """Small trained models, cached by code fingerprint (stale sets removed) unless given."""
    if models_dir is None:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "recsys-chaos"
        fingerprint = code_fingerprint()
        if cache.is_dir():
            for stale in cache.iterdir():
                if stale.name != fingerprint:
                    shutil.rmtree(stale, ignore_errors=True)
        models_dir = cache / fingerprint / f"{items}-u{users}-e1"
    return ensure_models(items, models_dir, users, 1, logs / "train.log")


def run(rig: ChaosRig, faults: Sequence[Fault], shape: LoadShape, timing: Timing, out: Path,
        warmup_s: float = 5.0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The faults one after the other under one continuous load; stops early when the system
    is not restored after one."""
    assert rig.server is not None
    origin = time.monotonic()
    load = MixedLoad(rig.server.url, rig.models.user_ids(), rig.item_ids(), shape).start()
    results = []
    try:
        time.sleep(warmup_s)
        for fault in faults:
            results.append(run_fault(rig, load, fault, timing, out, log))
            if not results[-1]["restored"]["ok"]:
                log(f"  not restored after {fault.name}: stopping here "
                    f"({results[-1]['restored']})")
                break
    finally:
        samples = load.stop()
    chaos_report.write_samples(rig.logs / "samples.jsonl", samples, origin)
    return {"faults": results, "events_total": events_total(rig, samples)}


def events_total(rig: ChaosRig, samples: Sequence[Sample]) -> dict[str, int]:
    users = {s.user for s in samples if s.endpoint == "/events"}
    return chaos_report.event_outcome(samples, rig.stored_events(users))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", help="comma-separated fault names (default: all)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "chaos")
    parser.add_argument("--models-dir", type=Path, help="trained models (default: a cache)")
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=float, default=80.0, help="requests/s at most")
    parser.add_argument("--before", type=float, default=Timing.before_s)
    parser.add_argument("--during", type=float, default=Timing.during_s)
    parser.add_argument("--after", type=float, default=Timing.after_s)
    parser.add_argument("--repeat", type=int, default=1, help="run the faults this many times")
    parser.add_argument("--no-proxy", action="store_true",
                        help="the service talks to Redis directly (no redis-latency faults)")
    return parser.parse_args(argv)


def rigs_for(wanted: list[str] | None, proxy: bool) -> list[RigOptions]:
    """The servers the wanted faults need: the pinned one, the one following the registry."""
    rigs = []
    if wanted is None or set(wanted) - set(REGISTRY_FAULTS):
        rigs.append(RigOptions(proxy=proxy))
    if wanted is None or set(wanted) & set(REGISTRY_FAULTS):
        rigs.append(replace(REGISTRY_OPTIONS, proxy=proxy))
    return rigs


def chosen(rig: ChaosRig, timing: Timing, wanted: list[str] | None,
           repeat: int) -> list[Fault]:
    """The wanted faults of this rig (every one by default), `repeat` rounds of them; KeyError
    names those it does not know."""
    faults = all_faults(rig, timing)
    if wanted is not None:
        mine = [name for name in wanted
                if (name in REGISTRY_FAULTS) == (rig.registry is not None)]
        unknown = set(mine) - {f.name for f in faults}
        if unknown:
            raise KeyError(f"unknown faults {sorted(unknown)}; known: "
                           f"{[f.name for f in faults]} and {list(REGISTRY_FAULTS)}")
        faults = [f for f in faults if f.name in mine]
    if repeat > 1:  # fresh injectors each round, named apart (their plots too)
        names = {f.name for f in faults}
        faults = [fault for n in range(repeat) for fault in
                  renamed([f for f in all_faults(rig, timing) if f.name in names], f"-{n + 1}")]
    return faults


def describe(options: RigOptions, models: BenchModels) -> str:
    source = "pinned models" if options.model_source == "pinned" else (
        "following an MLflow tracking server over a copy of the models' registry (polled every "
        f"{options.registry_poll_s:g} s +-20%), promoted between two trained sets")
    return (f"bentoml serve, topology {options.topology}, {options.workers} API workers, "
            f"{source}, budget/tower+retrieval/ranking "
            f"{'/'.join(f'{t:g}' for t in options.timeouts_ms)} ms, shadow fraction "
            f"{options.shadow_fraction:g}, {models.n_items:,} items")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(QUIET_ENV)
    out: Path = args.out
    wanted = args.faults.split(",") if args.faults else None
    if wanted is not None and "rollback" in wanted and "promotion" not in wanted:
        print("rollback rolls back a promotion: ask for both (--faults promotion,rollback)",
              file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    load_start = load_average()
    rigs = rigs_for(wanted, proxy=not args.no_proxy)
    models = chaos_models(args.models_dir, args.items, args.users, out / "logs")
    if any(options.model_source == "registry" for options in rigs):
        ensure_challenger(models, 1, out / "logs" / "train-challenger.log")
    shape = LoadShape(concurrency=args.concurrency, rate=args.rate)
    timing = Timing(args.before, args.during, args.after)
    print(f"chaos -> {out} (load average {load_start})")
    results: list[dict[str, Any]] = []
    events: dict[str, int] = {}
    servers = []
    for options in rigs:
        with ChaosRig(models, out, options) as rig:
            try:
                faults = chosen(rig, timing, wanted, args.repeat)
            except KeyError as error:
                print(error.args[0], file=sys.stderr)
                return 2
            part = run(rig, faults, shape, timing, out)
        results += part["faults"]
        events = {k: events.get(k, 0) + v for k, v in part["events_total"].items()}
        servers.append(("promotion and rollback: " if options.model_source == "registry"
                        else "") + describe(options, models))
    report: dict[str, Any] = {"faults": results, "events_total": events}
    report["meta"] = {
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - clock, 1), "cores": os.cpu_count(),
        "load_average_start": load_start, "load_average_end": load_average(),
        "load": f"{shape.concurrency} paced clients, at most {shape.rate:g} req/s, Zipf(s="
                f"{shape.zipf_s:g}) over {models.n_users} known users, /recommend /events "
                f"/similar_items /rank = {'/'.join(f'{m:g}' for m in shape.mix)}",
        "server": "; ".join(servers),
        "redis": "durable (appendonly yes, appendfsync everysec), "
                 + ("reached directly" if args.no_proxy else "behind a latency proxy"),
        "timing": vars(timing),
    }
    path = chaos_report.write(out, report)
    print(chaos_report.table(report["faults"]))
    print(f"events of the whole run: {report['events_total']}")
    print(f"report: {path}")
    failed = any(r["phases"]["all"]["failed"] or r["events"]["lost"] or not r["restored"]["ok"]
                 for r in report["faults"])
    return 1 if failed or report["events_total"]["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
