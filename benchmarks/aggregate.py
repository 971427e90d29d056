"""From raw runs to the numbers the report states: medians over repeats, ratios, target checks."""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from statistics import median
from typing import Any

Run = dict[str, Any]


def _median(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return round(median(kept), 3) if kept else None


def point(runs: list[Run]) -> dict[str, Any]:
    """Medians over the repeats of one (target, concurrency)."""
    first = runs[0]
    batches: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for endpoint, b in run.get("extra", {}).get("batches", {}).items():
            batches[endpoint].append(b["mean_rows"])
    model_503 = sum(codes.get("503", 0) for run in runs
                    for key, codes in run.get("extra", {}).get("requests_by_code", {}).items()
                    if key.endswith(("/score_champion", "/encode_champion")))
    fallbacks: dict[str, int] = defaultdict(int)
    for run in runs:
        for reason, n in run.get("extra", {}).get("fallbacks", {}).items():
            fallbacks[reason] += n
    return {
        "target": first["target"], "connections": first["spec"]["connections"],
        "repeats": len(runs),
        "rps": _median(r["rps"] for r in runs),
        "requests": _median(r["requests"] for r in runs),
        "rps_all": [r["rps"] for r in runs],
        **{f"{p}_ms": _median(r["latency_ms"].get(p) for r in runs)
           for p in ("p50", "p95", "p99", "p99.9")},
        "server_p50_ms": _median(r["server_latency_ms"].get("p50") for r in runs),
        "server_p99_ms": _median(r["server_latency_ms"].get("p99") for r in runs),
        "non_2xx": sum(r["non_2xx"] for r in runs),
        "degraded_share": _median(r.get("degraded", 0) / r["requests"] if r["requests"] else None
                                  for r in runs),
        "socket_errors": sum(sum(r["socket_errors"].values()) for r in runs),
        "hit_rate": _median(r.get("hit_rate") for r in runs),
        "client_cores": _median(r["cpu"]["client_cores"] for r in runs),
        "server_cores": _median(r["cpu"]["server_cores"] for r in runs),
        "other_cores": _median(r["cpu"]["other_cores"] for r in runs),
        "server_cpu_ms_per_request": _median(r["cpu"].get("server_cpu_ms_per_request")
                                             for r in runs),
        "capped": any(r.get("extra", {}).get("capped") for r in runs),
        "mean_batch_rows": {k: _median(v) for k, v in sorted(batches.items())},
        "model_503": model_503,
        "fallbacks": dict(fallbacks),
        "stages": runs[len(runs) // 2].get("extra", {}).get("stages", {}),
    }


def points(runs: list[Run]) -> dict[str, dict[int, dict[str, Any]]]:
    """target -> connections -> point, from a flat list of runs."""
    grouped: dict[tuple[str, int], list[Run]] = defaultdict(list)
    for run in runs:
        grouped[(run["target"], run["spec"]["connections"])].append(run)
    out: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for (target, c), group in sorted(grouped.items()):
        out[target][c] = point(group)
    return dict(out)


def best_within_slo(curve: dict[int, dict[str, Any]], slo_ms: float) -> dict[str, Any] | None:
    """The point with the most req/s whose client p99 is within the SLO (None if none is)."""
    ok = [p for p in curve.values() if p["p99_ms"] is not None and p["p99_ms"] <= slo_ms
          and p["rps"] and not p["non_2xx"]]
    return max(ok, key=lambda p: p["rps"]) if ok else None


def peak(curve: dict[int, dict[str, Any]]) -> dict[str, Any]:
    return max(curve.values(), key=lambda p: p["rps"] or 0.0)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b to 4 places: with 3, a ratio of 0.89991 read as 0.9 and passed a >= 0.9 target."""
    return round(a / b, 4) if a is not None and b else None


def peer_ratios(curves: dict[str, dict[int, dict[str, Any]]], inprocess: dict[str, Any],
                slo_ms: float) -> dict[str, Any]:
    """service / floor, service / naive, service / engine: at each concurrency, at the SLO, at peak."""
    out: dict[str, Any] = {"by_concurrency": {}, "at_slo": {}, "at_peak": {}}
    miss, hit = curves.get("service-miss", {}), curves.get("service-hit", {})
    noop, naive = curves.get("noop", {}), curves.get("naive", {})
    single = curves.get("service-miss-1w", {})
    for c in sorted(miss):
        out["by_concurrency"][c] = {
            "miss_over_noop": ratio(miss[c]["rps"], noop.get(c, {}).get("rps")),
            "hit_over_noop": ratio(hit.get(c, {}).get("rps"), noop.get(c, {}).get("rps")),
            "miss_over_naive": ratio(miss[c]["rps"], naive.get(c, {}).get("rps")),
            "naive_p99_over_miss_p99": ratio(naive.get(c, {}).get("p99_ms"), miss[c]["p99_ms"]),
            "miss_over_one_worker": ratio(miss[c]["rps"], single.get(c, {}).get("rps")),
        }
    slo = {name: best_within_slo(curve, slo_ms) for name, curve in curves.items()
           if name in ("service-miss", "service-hit", "noop", "naive", "service-miss-1w")}
    rps = {name: (p["rps"] if p else None) for name, p in slo.items()}
    out["at_slo"] = {"slo_p99_ms": slo_ms, "rps": rps,
                     "connections": {n: (p["connections"] if p else None) for n, p in slo.items()},
                     "miss_over_noop": ratio(rps.get("service-miss"), rps.get("noop")),
                     "hit_over_noop": ratio(rps.get("service-hit"), rps.get("noop")),
                     "miss_over_naive": ratio(rps.get("service-miss"), rps.get("naive")),
                     "miss_over_one_worker": ratio(rps.get("service-miss"),
                                                   rps.get("service-miss-1w"))}
    top = max((c for c in miss if c in noop), default=None)
    if top is not None:  # CPU per request at the highest shared concurrency: robust to noise
        cost = {name: curves[name].get(top, {}).get("server_cpu_ms_per_request")
                for name in ("service-miss", "service-hit", "noop", "naive") if name in curves}
        out["cpu_per_request"] = {"connections": top, "server_cpu_ms": cost,
                                  "miss_over_noop": ratio(cost.get("service-miss"), cost.get("noop")),
                                  "hit_over_noop": ratio(cost.get("service-hit"), cost.get("noop")),
                                  "miss_over_naive": ratio(cost.get("service-miss"), cost.get("naive"))}
    peaks = {name: peak(curve)["rps"] for name, curve in curves.items() if curve}
    engine = max((r["rps"] for r in inprocess.get("runs", [])), default=None)
    engine_one = next((r for r in inprocess.get("runs", []) if r["concurrency"] == 1), None)
    miss_one = miss.get(1, {})
    out["at_peak"] = {"rps": {**peaks, "in-process": engine},
                      "miss_over_noop": ratio(peaks.get("service-miss"), peaks.get("noop")),
                      "hit_over_noop": ratio(peaks.get("service-hit"), peaks.get("noop")),
                      "miss_over_naive": ratio(peaks.get("service-miss"), peaks.get("naive")),
                      "miss_over_one_worker": ratio(peaks.get("service-miss"),
                                                    peaks.get("service-miss-1w")),
                      "miss_over_inprocess": ratio(peaks.get("service-miss"), engine)}
    if engine_one and miss_one:
        out["one_at_a_time"] = {
            "service_server_p50_ms": miss_one.get("server_p50_ms"),
            "inprocess_p50_ms": engine_one["latency_ms"]["p50"],
            "service_client_p50_ms": miss_one.get("p50_ms"),
            "server_over_inprocess_p50": ratio(miss_one.get("server_p50_ms"),
                                               engine_one["latency_ms"]["p50"]),
            "client_over_server_p50": ratio(miss_one.get("p50_ms"), miss_one.get("server_p50_ms"))}
    return out


def batching_ratios(variants: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """req/s and p99 of every variant over 'on', per concurrency."""
    on = variants.get("on", {})
    out: dict[str, Any] = {}
    for name, curve in variants.items():
        if name == "on":
            continue
        out[f"on_over_{name}"] = {
            c: {"rps": ratio(on.get(c, {}).get("rps"), p["rps"]),
                "p99": ratio(on.get(c, {}).get("p99_ms"), p["p99_ms"])}
            for c, p in sorted(curve.items())}
    return out


def target_checks(curves: dict[str, dict[int, dict[str, Any]]], ratios: dict[str, Any],
                  scale: dict[str, Any], main_size: int, slo_ms: float,
                  ranked_candidates: int | None) -> list[dict[str, Any]]:
    """The issue's targets against what was measured (None: not measured in this run)."""
    miss_one = curves.get("service-miss", {}).get(1, {})
    at_slo = ratios.get("at_slo", {})
    checks = [
        _check(f"cache-miss server-side p50, one at a time, {main_size:,} items",
               miss_one.get("server_p50_ms"), "<=", 7.0, "ms"),
        _check(f"cache-miss server-side p99, one at a time, {main_size:,} items",
               miss_one.get("server_p99_ms"), "<=", 15.0, "ms"),
        _check(f"cache-miss req/s / no-op req/s (best with p99 <= {slo_ms:g} ms)",
               at_slo.get("miss_over_noop"), ">=", 0.60, "x"),
        _check(f"cache-miss req/s / naive req/s (best with p99 <= {slo_ms:g} ms)",
               at_slo.get("miss_over_naive"), ">=", 1.0, "x"),
        _check(f"cache-hit req/s / no-op req/s (best with p99 <= {slo_ms:g} ms)",
               at_slo.get("hit_over_noop"), ">=", 0.90, "x"),
    ]
    million = scale.get("1000000")
    if million:
        index = million["index"]
        checks.append(_check("1M items: retrieval p99 (top-1000, one query)",
                             index["latency_top1000_ms"]["p99"], "<=", 5.0, "ms"))
        checks.append(_check("1M items: recall@100 vs exact", index["recall_at_100"], ">=", 0.95, ""))
    else:
        checks.append(_check("1M items: retrieval p99 / recall@100", None, "<=", 5.0, "ms"))
    # The sum of each process's peak: an upper bound of the processes' peak together.
    together = [sum(million.get(t, {}).get("peak_rss_mb", {}).values())
                for t in ("inline", "services") if million and million.get(t)]
    checks.append(_check("1M items: RSS of all service processes together (worst topology)",
                         max(together) if together else None, "<=", 2048.0, "MiB"))
    if ranked_candidates is not None:
        checks[0]["note"] = f"{ranked_candidates} ranked candidates"
    return checks


def _check(name: str, value: float | None, op: str, limit: float, unit: str) -> dict[str, Any]:
    passed = None if value is None else (value <= limit if op == "<=" else value >= limit)
    return {"target": name, "value": value, "op": op, "limit": limit, "unit": unit,
            "passed": passed}


def search_ratios(curves: dict[str, dict[int, dict[str, Any]]], slo_ms: float) -> dict[str, Any]:
    """/search's cache misses over the no-op floor's /search: req/s at each concurrency, at the
    SLO, at peak, and server CPU per request at the highest concurrency both ran."""
    miss, noop = curves.get("search-miss", {}), curves.get("noop-search", {})
    slo = {name: best_within_slo(curve, slo_ms) for name, curve in curves.items()}
    rps = {name: (p["rps"] if p else None) for name, p in slo.items()}
    peaks = {name: peak(curve)["rps"] for name, curve in curves.items() if curve}
    out: dict[str, Any] = {
        "by_concurrency": {c: ratio(p["rps"], noop.get(c, {}).get("rps"))
                           for c, p in sorted(miss.items())},
        "at_slo": {"slo_p99_ms": slo_ms, "rps": rps,
                   "connections": {n: (p["connections"] if p else None) for n, p in slo.items()},
                   "miss_over_noop": ratio(rps.get("search-miss"), rps.get("noop-search"))},
        "at_peak": {"rps": peaks,
                    "miss_over_noop": ratio(peaks.get("search-miss"), peaks.get("noop-search"))}}
    top = max((c for c in miss if c in noop), default=None)
    if top is not None:
        cost = {name: curves[name][top].get("server_cpu_ms_per_request")
                for name in ("search-miss", "noop-search")}
        out["cpu_per_request"] = {"connections": top, "server_cpu_ms": cost, "miss_over_noop":
                                  ratio(cost["search-miss"], cost["noop-search"])}
    return out


def search_checks(curves: dict[str, dict[int, dict[str, Any]]], n_items: int) -> list[dict[str, Any]]:
    """Issue 17's /search targets: server-side latency of a cache miss one at a time."""
    one = curves.get("search-miss", {}).get(1, {})
    return [_check(f"/search cache-miss server-side p50, one at a time, {n_items:,} items",
                   one.get("server_p50_ms"), "<=", 10.0, "ms"),
            _check(f"/search cache-miss server-side p99, one at a time, {n_items:,} items",
                   one.get("server_p99_ms"), "<=", 20.0, "ms")]
