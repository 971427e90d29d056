"""The replica benchmark's report: results.json (every run), report.md (the table, where the
CPU went, the curve), plots.

    python -m benchmarks.replicas_report reports/<run>     # re-render from results.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import median
from typing import Any

from benchmarks import aggregate, plots

Curve = dict[int, dict[str, Any]]


def _cores(runs: list[dict[str, Any]], program: str) -> float | None:
    """Median cores of the processes whose label starts with `program`."""
    values = [sum(v for k, v in r["cpu"]["server_cores_by_process"].items()
                  if k.startswith(program)) for r in runs]
    return round(median(values), 3) if values else None


def rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target (replica count, balance mode, through HAProxy or direct)."""
    s = results["meta"]["settings"]
    runs = [run for group in results["sets"] for run in group["runs"]]
    curves = aggregate.points(runs)
    out = []
    for target, curve in curves.items():
        mine = [r for r in runs if r["target"] == target]
        fixed = curve.get(s["fixed_concurrency"], {})
        at_fixed = [r for r in mine if r["spec"]["connections"] == s["fixed_concurrency"]]
        best = aggregate.best_within_slo(curve, s["slo_p99_ms"])
        haproxy, redis = _cores(at_fixed, "haproxy"), _cores(at_fixed, "redis-server")
        out.append({
            "target": target, "replicas": mine[0]["replicas"], "balance": mine[0]["balance"],
            "via": mine[0]["via"], "curve": curve,
            "slo": None if best is None else {k: best[k] for k in ("connections", "rps",
                                                                   "p50_ms", "p99_ms")},
            "fixed": {k: fixed.get(k) for k in ("connections", "rps", "p50_ms", "p99_ms",
                                                "non_2xx", "degraded_share")},
            "peak": {k: aggregate.peak(curve)[k] for k in ("connections", "rps")},
            "cores_at_fixed": {"service": None if fixed.get("server_cores") is None
                               else round(fixed["server_cores"] - (haproxy or 0.0)
                                          - (redis or 0.0), 3),
                               "haproxy": haproxy, "redis": redis,
                               "wrk": fixed.get("client_cores"),
                               "other": fixed.get("other_cores")},
            "replica_cpu_ms_per_request": None if not fixed.get("rps") or fixed.get(
                "server_cores") is None else round(1000 * (fixed["server_cores"] - (haproxy or 0.0)
                                                          - (redis or 0.0)) / fixed["rps"], 2),
            "load_average": round(median(r["extra"]["load_average"] for r in mine), 2),
            "non_2xx": sum(r["non_2xx"] for r in mine),
        })
    out.sort(key=lambda r: (r["via"] != "direct", r["balance"] != "leastconn", r["replicas"]))
    base = next((r for r in out if r["via"] == "haproxy" and r["replicas"] == 1
                 and r["balance"] == "leastconn"), None)
    base_slo = (base["slo"] or {}).get("rps") if base else None
    base_fixed = base["fixed"]["rps"] if base else None
    for row in out:
        row["over_one"] = {"slo": aggregate.ratio((row["slo"] or {}).get("rps"), base_slo),
                           "fixed": aggregate.ratio(row["fixed"]["rps"], base_fixed)}
    return out


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def table(derived: list[dict[str, Any]], fixed_c: int, slo_ms: float) -> list[str]:
    lines = [(f"| replicas | via | best req/s with p99 ≤ {slo_ms:g} ms (c) | p50 / p99 ms there | "
             f"req/s at c={fixed_c} | p50 / p99 ms at c={fixed_c} | × 1 replica (SLO, c={fixed_c}) "
             f"| cores at c={fixed_c}: replicas / HAProxy / Redis / wrk / other | replica CPU "
             f"ms/req at c={fixed_c} | load avg | non-2xx |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in derived:
        via = "direct" if r["via"] == "direct" else f"HAProxy ({r['balance']})"
        slo, fixed, cores = r["slo"] or {}, r["fixed"], r["cores_at_fixed"]
        lines.append(
            f"| {r['replicas']} | {via} | {_f(slo.get('rps'))} ({_f(slo.get('connections'))}) | "
            f"{_f(slo.get('p50_ms'))} / {_f(slo.get('p99_ms'))} | {_f(fixed['rps'])} | "
            f"{_f(fixed['p50_ms'])} / {_f(fixed['p99_ms'])} | {_f(r['over_one']['slo'], 2)}, "
            f"{_f(r['over_one']['fixed'], 2)} | {_f(cores['service'], 2)} / "
            f"{_f(cores['haproxy'], 2)} / {_f(cores['redis'], 2)} / {_f(cores['wrk'], 2)} / "
            f"{_f(cores['other'], 2)} | {_f(r['replica_cpu_ms_per_request'], 2)} | "
            f"{_f(r['load_average'], 2)} | {r['non_2xx']} |")
    return lines


def curve_table(derived: list[dict[str, Any]]) -> list[str]:
    lines = [("| target | c | req/s | p50 | p99 ms | non-2xx | degraded | hit rate | service / "
              "client / other cores |"), "|---|---|---|---|---|---|---|---|---|"]
    for r in derived:
        for c, p in sorted(r["curve"].items()):
            degraded = p.get("degraded_share")
            lines.append(f"| {r['target']} | {c} | {_f(p['rps'])} | {_f(p['p50_ms'], 2)} | "
                         f"{_f(p['p99_ms'], 2)} | {p['non_2xx']} | "
                         f"{'–' if degraded is None else f'{100 * degraded:.0f}%'} | "
                         f"{_f(p['hit_rate'], 2)} | {_f(p['server_cores'], 2)} / "
                         f"{_f(p['client_cores'], 2)} / {_f(p['other_cores'], 2)} |")
    return lines


def markdown(results: dict[str, Any], derived: list[dict[str, Any]],
             figures: dict[str, str]) -> str:
    meta, s = results["meta"], results["meta"]["settings"]
    described = meta["machine"]
    lines = ["# Replicas behind HAProxy", "",
             (f"Started {meta['started']}, took {meta['duration_s']:.0f} s; code fingerprint "
             f"`{meta['code_fingerprint']}`; {meta['wrk']} (one thread per connection); "
             f"{meta['haproxy']}. Traffic to 127.0.0.1 only."), "",
             (f"- {described['cpu_model']}: {described['logical_cores']} logical cores, "
             f"{described['memory_gb']} GB RAM; Python {described['python']}"),
             (f"- load average at start {described['load_average']}, at end "
             f"{meta['load_average_end']} (per target: the table's column)"),
             (f"- {s['items']:,} items, {s['users']} users, models of {s['epochs']} epochs; "
             f"{s['workers']} API worker per replica; cache misses only (distinct users, "
             f"hours and devices); {s['repeats']} repeats of {s['duration_s']:g} s per point "
             f"(medians), after a {s['warmup_s']:g} s warm-up"), "",
             "## Throughput by replica count", ""]
    lines += table(derived, s["fixed_concurrency"], s["slo_p99_ms"])
    lines += ["", ("Cores: CPU used during the run by the replicas (every process of each), "
              "HAProxy, Redis, wrk and everything else on the machine, in cores (2 = the whole "
              "machine). Every set started together (ready in "
              f"{results['sets'][0]['startup_s']} s) and stayed up; the runs went set after set "
              "at each concurrency, so idle sets' health checks count under other."), "",
              "## Sets", ""]
    for group in results["sets"]:
        lines.append(f"- {group['replicas']} replica(s), balance {group['balance']}: requests "
                     f"per replica {group['served_by_replica']}; HAProxy {group['haproxy']}")
    lines += ["", "## Every point", ""] + curve_table(derived)
    lines += ["", f"![throughput by replicas]({figures['replicas']})", "",
              f"![throughput]({figures['throughput']})", "", f"![latency]({figures['latency']})",
              ""]
    return "\n".join(lines)


def write(out: Path, results: dict[str, Any]) -> Path:
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    derived = rows(results)
    curves = {r["target"]: r["curve"] for r in derived}
    s = results["meta"]["settings"]
    figures = {
        "replicas": plots.throughput_vs_replicas(
            {r["target"]: r for r in derived},
            out / "replicas.png", s["fixed_concurrency"], s["slo_p99_ms"]),
        "throughput": plots.throughput_vs_concurrency(curves, out / "throughput.png",
                                                      "Cache misses through HAProxy"),
        "latency": plots.latency_vs_concurrency(curves, out / "latency.png",
                                                "Client latency through HAProxy")}
    summary = [{k: v for k, v in r.items() if k != "curve"} for r in derived]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    path = out / "report.md"
    path.write_text(markdown(results, derived, figures))
    return path


if __name__ == "__main__":
    run_dir = Path(sys.argv[1])
    print(write(run_dir, json.loads((run_dir / "results.json").read_text())))
