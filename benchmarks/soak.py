"""Soak: a long Zipf load with events against a real `bentoml serve`, sampling what could grow.

    python -m benchmarks.soak --minutes 20          # reports/soak/: soak.json, report.md, soak.png

The chaos suite's server (services topology, two API workers, durable Redis, shadow scoring on)
under the chaos suite's mixed load, plus a share of requests from users never seen before (an
unbounded stream of new cache keys and new histories, as real traffic brings). Every interval:
the RSS and open file descriptors of every server process, Redis' used_memory and key count,
and the requests/s, p99 and failures of the interval. The report compares the start (after a
warm-up) with the end and says what bounds each. History is capped per user at the service's
default (RECSYS_HISTORY_MAX_EVENTS, 200), not raised as the chaos suite raises it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import psutil
import redis

from benchmarks.chaos import chaos_models
from benchmarks.chaos_load import LoadShape, MixedLoad, Sample
from benchmarks.chaos_rig import ChaosRig, RigOptions, load_average
from benchmarks.procstats import process_label
from devtools.processes import QUIET_ENV, REPO_ROOT, process_tree

matplotlib.use("Agg")
import matplotlib.pyplot as plt

WARMUP_S = 60.0  # the start figures are taken this long into the run: models and caches warm
MIB = 2**20


def process_sample(root_pid: int) -> dict[str, dict[str, float]]:
    """"<service>:<pid>" -> {"rss_mib", "fds"} for every process of the server's tree."""
    out = {}
    for process in process_tree(root_pid):
        try:
            key = f"{process_label(process)}:{process.pid}"
            out[key] = {"rss_mib": round(process.memory_info().rss / MIB, 1),
                        "fds": process.num_fds()}
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return out


def redis_sample(url: str) -> dict[str, float]:
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        memory = client.info("memory")
        return {"used_memory_mib": round(memory["used_memory"] / MIB, 2), "keys": client.dbsize()}


def load_sample(samples: list[Sample], since: float) -> dict[str, Any]:
    recent = [s for s in samples if s.start >= since]
    latencies = [s.latency_ms for s in recent if s.status]
    return {"requests": len(recent), "failed": sum(s.failed for s in recent),
            "degraded": sum(s.degraded for s in recent),
            "refused_503": sum(s.refused for s in recent),
            "p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
            "p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies else None}


def history_lengths(url: str) -> dict[str, float]:
    """How many users have a history and how long the longest is (SCAN: once, at the end)."""
    with redis.Redis.from_url(url, socket_timeout=30) as client:
        lengths = [client.llen(key) for key in client.scan_iter("recsys:history:*", count=1000)]
    return {"users": len(lengths), "longest": max(lengths, default=0),
            "mean": round(float(np.mean(lengths)), 1) if lengths else 0.0}


def soak(rig: ChaosRig, shape: LoadShape, minutes: float, interval_s: float,
         log: Any = print) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(a point per interval, totals of the whole run)."""
    assert rig.server is not None
    load = MixedLoad(rig.server.url, rig.models.user_ids(), rig.item_ids(), shape).start()
    started, points = time.monotonic(), []
    try:
        while (elapsed := time.monotonic() - started) < minutes * 60:
            time.sleep(min(interval_s, max(0.0, minutes * 60 - elapsed)))
            now = time.monotonic()
            processes, store = process_sample(rig.server.pid), redis_sample(rig.redis.url)
            interval, average = load_sample(load.samples, now - interval_s), load_average()
            points.append({"t_s": round(now - started, 1), "load_average": average,
                           "processes": processes, "redis": store, "load": interval})
            rss = sum(p["rss_mib"] for p in processes.values())
            log(f"  {now - started:7.0f} s: {interval['requests'] / interval_s:5.1f} req/s, "
                f"p99 {interval['p99_ms']} ms, failed {interval['failed']}, server RSS "
                f"{rss:.0f} MiB, Redis {store['used_memory_mib']} MiB ({store['keys']} keys), "
                f"load {average[0]}")
    finally:
        samples = load.stop()
    return points, load_sample(samples, 0.0)


def summary(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Start (first point at or after WARMUP_S) against end (last point), per measure."""
    series = points
    start = next((p for p in series if p["t_s"] >= WARMUP_S), series[0])
    end = series[-1]
    out: dict[str, Any] = {"start_t_s": start["t_s"], "end_t_s": end["t_s"], "processes": {}}
    for key in end["processes"]:
        first = start["processes"].get(key)
        if first is None:
            continue  # a process that was not there at the start (none should be)
        last = end["processes"][key]
        peak = max(p["processes"].get(key, {}).get("rss_mib", 0.0) for p in series)
        out["processes"][key] = {"rss_start_mib": first["rss_mib"], "rss_end_mib": last["rss_mib"],
                                 "rss_peak_mib": peak, "fds_start": first["fds"],
                                 "fds_end": last["fds"]}
    out["redis"] = {"start": start["redis"], "end": end["redis"]}
    out["p99_ms"] = {"start": start["load"]["p99_ms"], "end": end["load"]["p99_ms"]}
    return out


def plot(points: list[dict[str, Any]], path: Path) -> str:
    series = points
    minutes = [p["t_s"] / 60 for p in series]
    fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    keys = sorted({k for p in series for k in p["processes"]})
    for key in keys:
        axes[0].plot(minutes, [p["processes"].get(key, {}).get("rss_mib") for p in series],
                     label=key)
        axes[1].plot(minutes, [p["processes"].get(key, {}).get("fds") for p in series],
                     label=key)
    axes[2].plot(minutes, [p["redis"]["used_memory_mib"] for p in series], color="C3")
    axes[3].plot(minutes, [p["load"]["p99_ms"] for p in series], color="C0", label="p99")
    axes[3].plot(minutes, [p["load"]["p50_ms"] for p in series], color="C2", label="p50")
    for ax, label in zip(axes, ("RSS (MiB)", "open fds", "Redis used_memory (MiB)",
                                "latency (ms)"), strict=True):
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    axes[3].legend(fontsize=7)
    axes[-1].set_xlabel("minutes")
    fig.suptitle("Soak: what the server holds over time")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def markdown(report: dict[str, Any]) -> str:
    meta, s = report["meta"], report["summary"]
    totals = report["totals"]
    lines = [f"# Soak {meta['started']}", "",
             (f"{meta['minutes']:g} minutes of {meta['load']}; server: {meta['server']}. "
             f"Load average {meta['load_average_start']} at the start, "
             f"{meta['load_average_end']} at the end."), "",
             (f"Requests: {totals['requests']:,}, failed {totals['failed']:,}, degraded "
             f"{totals['degraded']:,}, events refused {totals['refused_503']:,}; p50 "
             f"{totals['p50_ms']} ms, p99 {totals['p99_ms']} ms over the whole run."), "",
             (f"Start = {s['start_t_s']:g} s into the run (after warm-up), end = "
             f"{s['end_t_s']:g} s."), "",
             "| process | RSS start (MiB) | RSS end | peak | open fds start | end |",
             "|---|---:|---:|---:|---:|---:|"]
    for key, p in sorted(s["processes"].items()):
        lines.append(f"| {key} | {p['rss_start_mib']} | {p['rss_end_mib']} | "
                     f"{p['rss_peak_mib']} | {p['fds_start']} | {p['fds_end']} |")
    r = s["redis"]
    lines += ["", (f"Redis used_memory {r['start']['used_memory_mib']} → "
              f"{r['end']['used_memory_mib']} MiB, keys {r['start']['keys']:,} → "
              f"{r['end']['keys']:,}; histories at the end: {report['histories']}."),
              (f"p99 of the interval: {s['p99_ms']['start']} ms at the start, "
              f"{s['p99_ms']['end']} ms at the end."), "", "![soak](soak.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between samples")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "soak")
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument("--rate", type=float, default=80.0)
    parser.add_argument("--new-users", type=float, default=0.1,
                        help="share of requests from never-seen users")
    args = parser.parse_args(argv)
    os.environ.update(QUIET_ENV)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started, load_start = datetime.now(timezone.utc), load_average()
    models = chaos_models(args.models_dir, 2000, 500, out / "logs")
    shape = LoadShape(rate=args.rate, new_users=args.new_users)
    options = RigOptions(history_max_events=200, proxy=False)  # the service's default cap
    print(f"soak {args.minutes:g} min -> {out} (load average {load_start})")
    with ChaosRig(models, out, options) as rig:
        assert rig.server is not None
        print(f"  server ready in {rig.server.startup_s} s")
        points, totals = soak(rig, shape, args.minutes, args.interval)
        histories = history_lengths(rig.redis.url)
    report = {
        "meta": {"started": started.isoformat(timespec="seconds"), "minutes": args.minutes,
                 "load_average_start": load_start, "load_average_end": load_average(),
                 "load": f"{shape.concurrency} paced clients, at most {shape.rate:g} req/s, "
                         f"Zipf(s={shape.zipf_s:g}) over {models.n_users} known users, "
                         f"{shape.new_users:.0%} of requests from new users",
                 "server": f"topology {options.topology}, {options.workers} API workers, shadow "
                           f"fraction {options.shadow_fraction:g}, durable Redis, "
                           f"RECSYS_HISTORY_MAX_EVENTS={options.history_max_events}"},
        "summary": summary(points), "totals": totals, "histories": histories,
        "points": points,
    }
    report["plot"] = plot(points, out / "soak.png")
    (out / "soak.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown(report))
    print(markdown(report))
    return 1 if totals["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
