"""Write the run: results.json (everything), summary.json (derived numbers), report.md with plots."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks import aggregate, plots, search_http
from benchmarks.tables import curve_rows, fmt

PEER_TARGETS = ("service-miss", "service-miss-1w", "service-hit", "noop", "naive")


def derive(results: dict[str, Any]) -> dict[str, Any]:
    """Medians, ratios, target checks and bottleneck notes from the raw results."""
    settings = results["meta"]["settings"]
    peers = results.get("peers") or {}
    curves = aggregate.points(peers.get("runs", []))
    zipf = curves.pop("service-zipf", {})
    inprocess = peers.get("inprocess", {})
    ratios = aggregate.peer_ratios(curves, inprocess, settings["slo_p99_ms"]) if curves else {}
    batching_curves = batching_points(results.get("batching"))
    scale = results.get("scale") or {}
    checks = aggregate.target_checks(curves, ratios, scale, settings["main_size"],
                                     settings["slo_p99_ms"], inprocess.get("ranked_candidates"))
    gpu_curves = batching_points(results.get("batching_gpu"))
    derived: dict[str, Any] = {
        "curves": curves, "zipf": zipf, "ratios": ratios, "batching": batching_curves,
        "batching_ratios": aggregate.batching_ratios(batching_curves), "checks": checks,
        "batching_gpu": gpu_curves, "batching_gpu_ratios": aggregate.batching_ratios(gpu_curves)}
    search_curves = aggregate.points((results.get("search") or {}).get("runs", []))
    if search_curves:
        derived["search"] = {"curves": search_curves,
                             "ratios": aggregate.search_ratios(search_curves,
                                                               settings["slo_p99_ms"])}
        derived["checks"] = checks + aggregate.search_checks(search_curves,
                                                             results["search"]["n_items"])
    derived["notes"] = bottleneck_notes(derived, results) + search_http.notes(
        derived.get("search", {}))
    return derived


def batching_points(batching: dict[str, Any] | None) -> dict[str, dict[int, dict[str, Any]]]:
    variants = (batching or {}).get("variants", {})
    return {name: aggregate.points(v["runs"]).get(f"batching-{name}", {})
            for name, v in variants.items()}


def bottleneck_notes(derived: dict[str, Any], results: dict[str, Any]) -> list[str]:
    """What the numbers say about where the service spends its time (for the service owner)."""
    notes: list[str] = []
    curves, ratios = derived["curves"], derived["ratios"]
    every = [p for curve in [*curves.values(), *derived["batching"].values()] for p in curve.values()]
    client_bound = [f"{p['target']} c={p['connections']}" for p in every
                    if (p["client_cores"] or 0) > 0.8]
    if client_bound:
        notes.append(f"wrk used > 0.8 of a core in {', '.join(client_bound)}: those points "
                     "measure the client as much as the server.")
    noisy = [p for p in every if (p["other_cores"] or 0) > 0.3]
    if noisy:
        worst = max(p["other_cores"] for p in noisy)
        notes.append(f"other processes used > 0.3 cores during {len(noisy)} of {len(every)} "
                     f"load points (up to {worst:.2f} of {results['meta']['machine']['logical_cores']} "
                     "cores): those numbers are noisy; compare ratios within a repeat, not absolutes.")
    miss_one = curves.get("service-miss", {}).get(1)
    if miss_one and miss_one.get("stages"):
        stages = {k: v["mean_ms"] for k, v in miss_one["stages"].items() if k != "cache"}
        total = sum(stages.values()) or 1.0
        top = sorted(stages.items(), key=lambda kv: -kv[1])[:3]
        notes.append("cache-miss, one at a time, mean ms per stage (server): " + ", ".join(
            f"{k} {v:.2f} ({100 * v / total:.0f}%)" for k, v in top)
            + f"; sum of stages {total:.2f} ms vs server latency_ms p50 "
              f"{miss_one.get('server_p50_ms')} ms and client p50 {miss_one.get('p50_ms')} ms.")
    for target in ("service-miss", "service-zipf"):
        for c, p in sorted((curves.get(target) or derived["zipf"] if target == "service-zipf"
                            else curves.get(target, {})).items()):
            if (p.get("degraded_share") or 0) > 0.05:
                notes.append(
                    f"{target} c={c}: {100 * p['degraded_share']:.0f}% of responses degraded "
                    f"(server p50 {p['server_p50_ms']} ms vs the {results['meta'].get('budget_ms', 150)} "
                    "ms budget): the service is past its capacity and sheds work (degraded "
                    "results are cached for RECSYS_DEGRADED_TTL_S only)"
                    + (f" (Zipf hit rate {p['hit_rate']})." if target == "service-zipf" else "."))
    naive_one = curves.get("naive", {}).get(1) or {}
    if miss_one and (naive_one.get("server_p50_ms") or 0) > 2 * (miss_one.get("server_p50_ms") or 1e9):
        notes.append(f"naive server one at a time: handler p50 {naive_one['server_p50_ms']} ms vs "
                     f"the service's {miss_one['server_p50_ms']} ms. It keeps the libraries' default "
                     "thread pools (onnxruntime intra-op and faiss OpenMP = all cores), which "
                     "wait on each other when the cores are shared; the service pins 1 thread.")
    at_peak = ratios.get("at_peak", {})
    if at_peak.get("miss_over_noop") is not None and at_peak["miss_over_noop"] < 0.6:
        notes.append(f"cache-miss peak throughput is {at_peak['miss_over_noop']:.2f}x the no-op "
                     "floor's: the miss path (not the framework) bounds throughput.")
    if at_peak.get("hit_over_noop") is not None and at_peak["hit_over_noop"] < 0.9:
        notes.append(f"cache-hit peak throughput is {at_peak['hit_over_noop']:.2f}x the no-op "
                     "floor's: the hit path costs more than request validation and JSON.")
    for name, curve in derived["batching"].items():
        for c, p in sorted(curve.items()):
            degraded = {k: v for k, v in p["fallbacks"].items() if k.startswith("ranker")}
            if p["model_503"] or sum(degraded.values()) > 0.05 * (p["requests"] or 0):
                notes.append(f"batching {name} c={c}: model-service 503s {p['model_503']}, "
                             f"ranker fallbacks {degraded or 'none'} (responses were still 200 "
                             "but degraded to the fallback ranker).")
    cost = ratios.get("cpu_per_request", {})
    if cost.get("miss_over_noop"):
        notes.append(f"server CPU per request at c={cost['connections']}: {cost['server_cpu_ms']} ms "
                     f"(miss / no-op {cost['miss_over_noop']}x, hit / no-op "
                     f"{cost.get('hit_over_noop')}x, miss / naive {cost.get('miss_over_naive')}x); "
                     "on a saturated, otherwise idle machine req/s ratios approach the inverse.")
    for size, entry in (results.get("scale") or {}).items():
        index = entry["index"]
        if index["recall_at_100"] < 0.95:
            notes.append(f"{int(size):,} items: recall@100 {index['recall_at_100']} < 0.95 "
                         f"({index['kind']}, nprobe {index.get('nprobe')}).")
        for topology in ("inline", "services"):
            for process, mb in entry.get(topology, {}).get("peak_rss_mb", {}).items():
                if mb > 2048:
                    notes.append(f"{int(size):,} items, {topology}: {process} peaked at {mb:.0f} MiB "
                                 "(> 2 GB).")
    return notes


def markdown(results: dict[str, Any], derived: dict[str, Any], figures: dict[str, str]) -> str:
    meta, machine = results["meta"], results["meta"]["machine"]
    s = meta["settings"]
    kind = "QUICK (short runs, one small catalogue, no repeats: indicative only)" if s["quick"] \
        else "full"
    lines = [f"# Serving benchmark: {kind}", "",
             (f"Started {meta['started']}, took {meta['duration_s']:.0f} s. Code fingerprint "
             f"`{meta['code_fingerprint']}`. Client: {meta['wrk']}, one thread per connection, "
             "traffic to 127.0.0.1 only."), "",
             "## Machine", "",
             (f"- {machine['cpu_model']}: {machine['logical_cores']} logical cores, "
             f"{machine['memory_gb']} GB RAM; {machine['os']}; Python {machine['python']}"),
             f"- load average at start {machine['load_average']}, at end {meta['load_average_end']}",
             "- " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()),
             f"- GPU: {meta['gpu_note']}", ""]
    lines += ["## Targets", "", "| target | measured | limit | pass |", "|---|---|---|---|"]
    for c in derived["checks"]:
        passed = {True: "yes", False: "**no**", None: "not measured"}[c["passed"]]
        digits = 4 if c["unit"] == "x" else 3  # ratios at the precision they are checked at
        lines.append(f"| {c['target']} | {fmt(c['value'], digits)} {c['unit']} | {c['op']} "
                     f"{c['limit']:g} {c['unit']} | {passed} |")
    lines += ["", "## Bottlenecks and caveats seen in this run", ""]
    lines += [f"- {n}" for n in derived["notes"]] or ["- none flagged"]
    ratios = derived["ratios"]
    if derived["curves"]:
        peers = results["peers"]
        lines += ["", f"## Service vs peers ({peers['n_items']:,} items)", "",
                  ("Medians over repeats. Latency is client side (timed per request in "
                  "recommend.lua) unless marked server (`latency_ms` of each response). Cores: "
                  "CPU used by wrk / the server tree / everything else on the machine during the "
                  f"run. The service and the no-op floor run {peers.get('workers', 1)} API "
                  "worker(s); service-miss-1w is the service with one."), ""]
        lines += curve_rows({t: derived["curves"][t] for t in PEER_TARGETS if t in derived["curves"]})
        lines += ["", f"Start-up to ready (s; the three started together): {peers['startup_s']}", ""]
        if derived["zipf"]:
            z = next(iter(derived["zipf"].values()))
            lines.append(f"Zipf users (s={s['zipf_s']}, {s['users']} users, cold cache, "
                         f"c={z['connections']}, {s['zipf_duration_s']:g} s): hit rate reached "
                         f"{fmt(z['hit_rate'])}, {fmt(z['rps'], 1)} req/s, p50 {fmt(z['p50_ms'])} "
                         f"/ p99 {fmt(z['p99_ms'])} ms.")
        lines += ["", "### Ratios", "", "| ratio | at each concurrency | best within p99 SLO | peak |",
                  "|---|---|---|---|"]
        by_c = ratios.get("by_concurrency", {})
        for key, label in (("miss_over_noop", "service miss / no-op"),
                           ("hit_over_noop", "service hit / no-op"),
                           ("miss_over_naive", "service miss / naive"),
                           ("miss_over_one_worker", "service miss / the same with 1 worker")):
            per = ", ".join(f"c={c}: {fmt(v.get(key))}" for c, v in by_c.items())
            lines.append(f"| {label} (req/s) | {per} | {fmt(ratios['at_slo'].get(key))} | "
                         f"{fmt(ratios['at_peak'].get(key))} |")
        lines.append(f"| service miss / in-process engine (req/s) | | | "
                     f"{fmt(ratios['at_peak'].get('miss_over_inprocess'))} |")
        lines += ["", (f"SLO for 'best within': client p99 ≤ {s['slo_p99_ms']:g} ms, no errors; "
                  f"req/s at it: {ratios['at_slo']['rps']}."), ""]
        cost = ratios.get("cpu_per_request")
        if cost:
            lines.append(f"Server CPU per request at c={cost['connections']} (robust to other "
                         f"load): {cost['server_cpu_ms']} ms; miss / no-op "
                         f"{fmt(cost['miss_over_noop'])}x, hit / no-op {fmt(cost['hit_over_noop'])}x, "
                         f"miss / naive {fmt(cost['miss_over_naive'])}x.")
            lines.append("")
        one = ratios.get("one_at_a_time")
        if one:
            lines.append(f"One at a time: service server-side p50 {one['service_server_p50_ms']} ms "
                         f"vs in-process {one['inprocess_p50_ms']} ms "
                         f"({fmt(one['server_over_inprocess_p50'])}x); client p50 "
                         f"{one['service_client_p50_ms']} ms ({fmt(one['client_over_server_p50'])}x "
                         "the server's: HTTP + framework).")
        lines += ["", "### In-process engine (no HTTP, no cache)", "",
                  "| coroutines | req/s | p50 | p95 | p99 ms | CPU cores | degraded |", "|---|---|---|---|---|---|---|"]
        for r in peers["inprocess"]["runs"]:
            lat = r["latency_ms"]
            lines.append(f"| {r['concurrency']} | {r['rps']} | {lat['p50']} | {lat['p95']} | "
                         f"{lat['p99']} | {r['cpu_cores']} | {r['degraded']} |")
        lines += ["", ("Mean ms per stage, one at a time: service (from `recsys_stage_seconds`) "
                  "vs in-process:"), "", "| stage | service | in-process |", "|---|---|---|"]
        service_stages = (derived["curves"].get("service-miss", {}).get(1) or {}).get("stages", {})
        engine_stages = peers["inprocess"]["runs"][0].get("stages", {})
        for stage in sorted(set(service_stages) | set(engine_stages)):
            lines.append(f"| {stage} | {fmt(service_stages.get(stage, {}).get('mean_ms'), 3)} | "
                         f"{fmt(engine_stages.get(stage, {}).get('mean_ms'), 3)} |")
        lines += ["", f"![latency]({figures['latency']})", "", f"![throughput]({figures['throughput']})"]
    lines += _batching_section(results.get("batching"), derived["batching"],
                               derived["batching_ratios"], figures, "")
    lines += _batching_section(results.get("batching_gpu"), derived["batching_gpu"],
                               derived["batching_gpu_ratios"], figures, "gpu_")
    lines += search_http.section(results.get("search"), derived.get("search", {}), figures)
    lines += _scale_section(results.get("scale") or {}, figures.get("size"), "")
    lines += _scale_section(results.get("scale_gpu") or {}, None, " on the GPU")
    if results.get("errors"):
        lines += ["", "## Phases that failed", ""] + [
            f"- {k}: `{[x for x in v.splitlines() if x.strip()][-1][:400]}` (full text in results.json)"
            for k, v in results["errors"].items()]
    lines += ["", "## Settings", "", "```json", json.dumps(s, indent=1), "```", ""]
    return "\n".join(lines)


def _batching_section(batching: dict[str, Any] | None, curves: dict[str, Any],
                      ratios: dict[str, Any], figures: dict[str, str], prefix: str) -> list[str]:
    if not batching:
        return []
    b = batching
    lines = ["", (f"## Adaptive batching (topology=services, {b['n_items']:,} items"
             f"{', GPU' if b.get('gpu') else ''})"), "",
             "Variants: " + ", ".join(
                 f"{n}: {v.get('setting', v['max_batch_size'])}" for n, v in b["variants"].items())
             + " (off: the model services' APIs are not batchable, one request per call)"
             + ". Requests/batch from `bentoml_service_adaptive_batch_size` (requests, not "
             "rows); 503s are the model services' own (the entry service turns a ranker 503 "
             "into a fallback-ranked 200, counted under ranker fallbacks).", ""]
    for name, error in (b.get("errors") or {}).items():
        lines.append(f"- variant {name} did not run: `{error}`")
    if curves:
        lines += curve_rows({f"batching-{k}": v for k, v in curves.items()}, batching=True)
    for key, per in ratios.items():
        lines.append("")
        lines.append(f"{key.replace('_', ' ')}: " + ", ".join(
            f"c={c}: req/s {fmt(v['rps'])}x, p99 {fmt(v['p99'])}x" for c, v in per.items()))
    rss = {n: v["peak_rss_mb"] for n, v in b["variants"].items()}
    lines += ["", f"Peak RSS (MiB) per process: {rss}", ""]
    for key, alt in (("batching_latency", "latency"), ("batching_throughput", "throughput"),
                     ("batch_size", "batch size")):
        if prefix + key in figures:
            lines += [f"![{alt}]({figures[prefix + key]})", ""]
    return lines


def _scale_section(scale: dict[str, Any], figure: str | None, where: str) -> list[str]:
    lines: list[str] = []
    if scale:
        lines += ["", f"## Scale{where}", "",
                  ("| items | train s | index | build s | top-1000 p50 / p99 ms | top-100 p50 / p99 ms "
                  "| recall@100 | topology | e2e server p50 / p99 ms | client p50 / p99 ms | "
                  "c=8 req/s | start-up s | peak RSS MiB per process |"),
                  "|" + "---|" * 13]
        for size in sorted(scale, key=int):
            e = scale[size]
            ix = e["index"]
            kind = ix["kind"] + (f" {ix['nlist']}/{ix['nprobe']}" if ix["kind"] == "ivf" else "")
            first = True
            for topology in ("inline", "services"):
                if topology not in e:
                    continue
                t = e[topology]
                head = (f"| {int(size):,} | {e['train_s']} | {kind} | {ix.get('build_s')} | "
                        f"{ix['latency_top1000_ms']['p50']} / {ix['latency_top1000_ms']['p99']} | "
                        f"{ix['latency_top100_ms']['p50']} / {ix['latency_top100_ms']['p99']} | "
                        f"{ix['recall_at_100']} ") if first else "| | | | | | | "
                first = False
                srv, cli = t["c1"]["server_latency_ms"], t["c1"]["latency_ms"]
                rss = ", ".join(f"{k.split(':', 1)[1]} {v:.0f}" for k, v in t["peak_rss_mb"].items())
                lines.append(f"{head}| {topology} | {fmt(srv.get('p50'))} / {fmt(srv.get('p99'))} | "
                             f"{fmt(cli['p50'])} / {fmt(cli['p99'])} | "
                             f"{fmt(t['c8']['rps'], 1)} (c={t['c8']['spec']['connections']}) | "
                             f"{t['startup_s']} | {rss} |")
        if figure:
            lines += ["", f"![latency vs size]({figure})"]
    return lines


def write(out: Path, results: dict[str, Any]) -> Path:
    derived = derive(results)
    figures: dict[str, str] = {}
    if derived["curves"]:
        peers = {t: derived["curves"][t] for t in PEER_TARGETS if t in derived["curves"]}
        figures["latency"] = plots.latency_vs_concurrency(
            peers, out / "latency_vs_concurrency.png", "Client latency vs concurrency")
        figures["throughput"] = plots.throughput_vs_concurrency(
            peers, out / "throughput_vs_concurrency.png", "Throughput vs concurrency")
    for prefix, key in (("", "batching"), ("gpu_", "batching_gpu")):
        if derived[key]:
            named = {f"batching-{k}": v for k, v in derived[key].items()}
            figures[prefix + "batching_latency"] = plots.latency_vs_concurrency(
                named, out / f"{prefix}batching_latency.png", "Batching: latency vs concurrency")
            figures[prefix + "batching_throughput"] = plots.throughput_vs_concurrency(
                named, out / f"{prefix}batching_throughput.png", "Batching: throughput vs concurrency")
            figures[prefix + "batch_size"] = plots.batch_size_vs_concurrency(
                derived[key], out / f"{prefix}batch_size.png")
    search = derived.get("search", {}).get("curves")
    if search:
        figures["search_latency"] = plots.latency_vs_concurrency(
            search, out / "search_latency_vs_concurrency.png", "/search: latency vs concurrency")
        figures["search_throughput"] = plots.throughput_vs_concurrency(
            search, out / "search_throughput_vs_concurrency.png",
            "/search: throughput vs concurrency")
    if results.get("scale"):
        figures["size"] = plots.latency_vs_size(results["scale"], out / "latency_vs_size.png")
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "summary.json").write_text(json.dumps(derived, indent=1, default=str))
    report = out / "report.md"
    report.write_text(markdown(results, derived, figures))
    return report


def main() -> None:
    """Re-render report.md, summary.json and the plots from a run directory's results.json."""
    import sys

    out = Path(sys.argv[1])
    print(write(out, json.loads((out / "results.json").read_text())))


if __name__ == "__main__":
    main()
