"""Batch scoring on Ray against the in-process loop, and the precomputed tier under Zipf load.

    python -m benchmarks.batch_scoring [--items 10000] [--users 2000] [--repeat 10] [--cpus 2] \\
        [--out reports/batch-scoring]

1. Users per second, side by side on one machine, the same users and models: the in-process loop
   (one UserListScorer, batch after batch) against the Ray job (`--cpus` actors on a local Ray),
   over every synthetic user `--repeat` times (the same work per list, and a run long enough for
   Ray's start-up to be a fraction of it).
   Each engine also scores a small set first, so that its fixed cost (start-up, model loading,
   writing) and its marginal rate can be told apart. The two outputs must hold the same lists.
2. The share of /recommend answered from the tier: the job writes it to a Redis, the service runs
   with RECSYS_PRECOMPUTED_TIER=true on that Redis (cold caches), and wrk sends Zipf users, once
   as the suite's Zipf load does (every request with a context: the tier never answers those)
   and once with a user id and k only; then the same without the tier.
Writes report.json and report.md under --out (reports/ is not committed).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batch.job import JobReport, run_on_ray, select_users
from batch.scoring import ScoringSpec, UserListScorer
from benchmarks import machine, servers
from benchmarks.load import LoadSpec, run_wrk
from benchmarks.models import BenchModels, code_fingerprint, default_cache_root, ensure_models
from recsys.settings import ServingSettings

QUIET = {"BENTOML_DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
         "DO_NOT_TRACK": "true", "TQDM_DISABLE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
LEVELS = ("l1", "l2", "precomputed", "miss")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000, help="synthetic catalogue size")
    parser.add_argument("--users", type=int, default=2000, help="synthetic users (all scored)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=10, help="times each user is scored")
    parser.add_argument("--cpus", type=int, default=len(os.sched_getaffinity(0)),
                        help="CPUs of the local Ray: one scorer each")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--small", type=int, default=256, help="users of the fixed-cost run")
    parser.add_argument("--zipf-seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--skip-zipf", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("reports/batch-scoring"))
    return parser.parse_args(argv)


def in_process(spec: ScoringSpec, users: list[str], batch_size: int, out: Path) -> dict[str, Any]:
    """The loop in this process: load, score batch after batch, write one Parquet file."""
    start = time.perf_counter()
    scorer = UserListScorer(spec)
    loaded = time.perf_counter()
    tables = [scorer({"user_id": np.asarray(users[i:i + batch_size])})
              for i in range(0, len(users), batch_size)]
    scored = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables(tables), out / "lists.parquet")
    done = time.perf_counter()
    scorer.close()
    return {"users": len(users), "seconds": round(done - start, 3),
            "load_s": round(loaded - start, 3), "score_s": round(scored - loaded, 3),
            "write_s": round(done - scored, 3),
            "users_per_s": round(len(users) / (done - start), 1),
            "scoring_users_per_s": round(len(users) / (scored - loaded), 1)}


def on_ray(spec: ScoringSpec, users: list[str], batch_size: int, cpus: int,
           out: Path) -> JobReport:
    return run_on_ray(spec, users, str(out.resolve()), actors=cpus, batch_size=batch_size)


def marginal(small: dict[str, Any], large: dict[str, Any]) -> float:
    """Users per second beyond the fixed cost: (N - n) / (T - t)."""
    extra_s = large["seconds"] - small["seconds"]
    return round((large["users"] - small["users"]) / extra_s, 1) if extra_s > 0 else float("nan")


def same_lists(a: Path, b: Path) -> bool:
    def lists(path: Path) -> dict[str, list[str]]:
        table = pq.read_table(path, columns=["user_id", "items"])
        return dict(zip(table.column("user_id").to_pylist(), table.column("items").to_pylist()))
    return lists(a) == lists(b)


def throughput(args: argparse.Namespace, spec: ScoringSpec, users: list[str],
               work: Path) -> dict[str, Any]:
    import ray

    small = users[:args.small]
    local: dict[str, Any] = {"small": in_process(spec, small, args.batch_size, work / "inprocess-small"),
                             "all": in_process(spec, users, args.batch_size, work / "inprocess")}
    local["marginal_users_per_s"] = marginal(local["small"], local["all"])
    print(f"in-process: {local}", flush=True)
    started = time.perf_counter()
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False)
    init_s = round(time.perf_counter() - started, 3)
    try:
        distributed: dict[str, Any] = {
            "init_s": init_s,
            "small": on_ray(spec, small, args.batch_size, args.cpus, work / "ray-small").as_dict(),
            "all": on_ray(spec, users, args.batch_size, args.cpus, work / "ray").as_dict(),
        }
    finally:
        ray.shutdown()
    distributed["marginal_users_per_s"] = marginal(distributed["small"], distributed["all"])
    print(f"ray: {distributed}", flush=True)
    return {"in_process": local, "ray": distributed,
            "same_lists": same_lists(work / "inprocess", work / "ray"),
            "speedup_end_to_end": round(distributed["all"]["users_per_s"]
                                        / local["all"]["users_per_s"], 2),
            "speedup_marginal": round(distributed["marginal_users_per_s"]
                                      / local["marginal_users_per_s"], 2)}


def zipf_share(args: argparse.Namespace, models: BenchModels, spec: ScoringSpec,
               users: list[str], work: Path) -> dict[str, Any]:
    """The tier written by the job, then the service under Zipf load with it on and off."""
    import ray

    users_file = work / "users.txt"
    users_file.write_text("\n".join(models.user_ids()) + "\n")
    runs = {}
    for tier in (True, False):
        redis = servers.redis(work / f"redis-{'tier' if tier else 'plain'}").start()
        try:
            if tier:
                ray.init(address="local", num_cpus=args.cpus, include_dashboard=False)
                try:
                    job = on_ray(replace(spec, redis_url=redis.url), users, args.batch_size,
                                 args.cpus, work / "ray-tier")
                finally:
                    ray.shutdown()
                print(f"tier written: {job.as_dict()}", flush=True)
            extra = {"RECSYS_PRECOMPUTED_TIER": str(tier).lower()}
            with servers.recommender(models, redis, work / f"service-tier-{tier}.log",
                                     workers=1, extra=extra) as service:
                for context in (True, False):
                    load = LoadSpec(service.url, users_file, args.connections, args.zipf_seconds,
                                    mode="zipf", k=spec.k, seed=3 if context else 4,
                                    context=context)
                    result = run_wrk(f"zipf-tier-{tier}-context-{context}", load, [service.pid])
                    runs[f"tier {'on' if tier else 'off'}, "
                         f"{'with context' if context else 'user id and k only'}"] = \
                        summarize(result.as_dict())
                    print(runs, flush=True)
        finally:
            redis.stop()
    return runs


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    levels = result["cache_levels"]
    total = sum(levels.values()) or 1
    return {"requests": result["requests"], "rps": result["rps"],
            "client_p50_ms": result["latency_ms"]["p50"],
            "client_p99_ms": result["latency_ms"]["p99"],
            "server_p50_ms": result["server_latency_ms"].get("p50"),
            "levels": levels,
            "share": {level: round(levels.get(level, 0) / total, 4) for level in LEVELS},
            "non_2xx": result["non_2xx"], "degraded": result["degraded"]}


def markdown(report: dict[str, Any]) -> str:
    t = report["throughput"]
    local, on_ray_ = t["in_process"], t["ray"]
    header = (f"{report['items']:,} items, {report['scored_users']:,} users scored "
              f"{report['repeat']} times ({local['all']['users']:,} lists), k {report['k']}, "
              f"{report['cpus']} CPUs for Ray; {report['machine']['cpu_model']}, load average "
              f"{report['load_before']} before, {report['load_after']} after.")
    local_row = (f"| in-process loop (1 process) | {local['all']['users']:,} | "
                 f"{local['all']['seconds']} | {local['all']['users_per_s']} | "
                 f"{local['marginal_users_per_s']} | load {local['all']['load_s']} s, write "
                 f"{local['all']['write_s']} s |")
    ray_row = (f"| Ray Data, {report['cpus']} actors | {on_ray_['all']['users']:,} | "
               f"{on_ray_['all']['seconds']} | {on_ray_['all']['users_per_s']} | "
               f"{on_ray_['marginal_users_per_s']} | ray.init {on_ray_['init_s']} s; "
               f"{on_ray_['small']['users']} users took {on_ray_['small']['seconds']} s |")
    verdict = (f"Ray / in-process: {t['speedup_end_to_end']}x end to end, "
               f"{t['speedup_marginal']}x marginal. Same lists in both outputs: "
               f"{t['same_lists']}.")
    lines = [f"# Batch scoring on Ray ({report['started']})", "", header, "",
             "| engine | lists | end to end s | lists/s | marginal lists/s | fixed cost |",
             "|---|---|---|---|---|---|", local_row, ray_row, "", verdict, ""]
    if report.get("zipf"):
        lines += ["| Zipf run | req/s | client p50 / p99 ms | l1 | l2 | precomputed | miss |",
                  "|---|---|---|---|---|---|---|"]
        for name, run in report["zipf"].items():
            share = run["share"]
            lines.append(f"| {name} | {run['rps']} | {run['client_p50_ms']} / "
                         f"{run['client_p99_ms']} | {share['l1']:.1%} | {share['l2']:.1%} | "
                         f"{share['precomputed']:.1%} | {share['miss']:.1%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    for name, value in QUIET.items():
        os.environ.setdefault(name, value)
    args = parse_args(argv)
    work = args.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    root = default_cache_root() / code_fingerprint() / f"{args.items}-u{args.users}-e{args.epochs}"
    models = ensure_models(args.items, root, args.users, args.epochs, work / "train.log")
    service = ServingSettings()  # type: ignore[call-arg]  # the service's defaults and RECSYS_*
    spec = ScoringSpec.for_batch(models.refs(), service, 10, None, 3600.0)
    users = select_users(spec, "all")
    report: dict[str, Any] = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "items": args.items, "scored_users": len(users), "repeat": args.repeat, "k": spec.k,
        "cpus": args.cpus,
        "batch_size": args.batch_size, "machine": machine.describe(),
        "load_before": machine.load_average()}
    report["throughput"] = throughput(args, spec, users * args.repeat, work)
    if not args.skip_zipf:
        report["zipf"] = zipf_share(args, models, spec, users, work)
    report["load_after"] = machine.load_average()
    (work / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (work / "report.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
