"""/search's request path in process, one query at a time, on a trained benchmark catalogue;
then the search index's build time and memory per catalogue size (benchmarks/search_build.py,
a child process each).

    python -m benchmarks.search                                  # 100K latency, 100K + 1M builds
    python -m benchmarks.search --models-root DIR --sizes 100000 # a trained set already there

Latency is SearchPipeline.respond without a cache (every query a miss), the answer's own
`latency_ms` (the server-side time /search reports), on the runtime build_runtime makes for the
service. The queries (seeded): 1-3 words of a title, the same with one typo, a genre name, and
each of those asked by a known user (personalised): the mix of training/search_eval.py.
Writes results.json and report.md under --out (reports/ is not committed).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.models import BenchModels, code_fingerprint, default_cache_root, ensure_models
from recsys.app.assembly import build_runtime
from recsys.pipeline.search import SearchPipeline
from recsys.pipeline.search_request import SearchRequest
from recsys.settings import ServingSettings
from recsys.telemetry import Telemetry

KINDS = ("title", "title_typo", "category", "title_user", "category_user")
WARM_UP = 100


class StageClock(Telemetry):
    def __init__(self) -> None:
        self.stages: dict[str, list[float]] = defaultdict(list)

    def observe(self, stage: str, seconds: float) -> None:
        self.stages[stage].append(seconds * 1000)


def queries(models: BenchModels, count: int, seed: int = 0) -> list[tuple[str, SearchRequest]]:
    from recsys.models import artifacts
    from training.search_queries import title_window, with_typo

    catalog = artifacts.load_catalog(models.workdir / "embedding")
    users = models.user_ids()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        row = int(rng.integers(1, catalog.size + 1))
        if kind.startswith("category"):
            genres = np.flatnonzero(catalog.genres[row] > 0)
            text = catalog.genre_vocab[int(genres[0])].lower() if genres.size else "drama"
        else:
            window = title_window(str(catalog.titles[row]), rng)
            text = " ".join(with_typo(window, rng) if kind == "title_typo" else window)
        user = users[int(rng.integers(len(users)))] if kind.endswith("_user") else None
        out.append((kind, SearchRequest(text, user_id=user)))
    return out


def percentiles(values: list[float]) -> dict[str, float]:
    x = np.asarray(values)
    return {"p50": round(float(np.percentile(x, 50)), 3),
            "p99": round(float(np.percentile(x, 99)), 3),
            "mean": round(float(x.mean()), 3), "n": float(x.size)}


async def measure_latency(models: BenchModels, count: int) -> dict[str, Any]:
    settings = ServingSettings(models_file=models.models_file, redis_url=None)
    clock = StageClock()
    started = time.perf_counter()
    runtime = build_runtime(settings, [models.refs()], clock)
    load_s = time.perf_counter() - started
    assert runtime.search is not None
    search = SearchPipeline(runtime.search.resolver, runtime.search.options, None, clock)
    asked = queries(models, count + WARM_UP)
    latency: dict[str, list[float]] = defaultdict(list)
    cpu: list[float] = []
    degraded = 0
    try:
        for n, (kind, request) in enumerate(asked):
            if n == WARM_UP:
                clock.stages.clear()
            cpu_start = time.process_time()
            answer = await search.respond(request)
            if n >= WARM_UP:
                cpu.append((time.process_time() - cpu_start) * 1000)
                latency[kind].append(answer.fields["latency_ms"])
                latency["all"].append(answer.fields["latency_ms"])
                degraded += bool(answer.result["degraded"])
    finally:
        search.close()
        await runtime.aclose()
    return {"items": models.n_items, "runtime_load_s": round(load_s, 2),
            "latency_ms": {k: percentiles(v) for k, v in latency.items()},
            "cpu_ms": percentiles(cpu), "degraded": degraded,
            "stages_ms": {k: percentiles(v) for k, v in clock.stages.items()}}


def measure_build(n_items: int, embedding: Path | None, out: Path) -> dict[str, Any]:
    target = out / f"build-{n_items}.json"
    command = [sys.executable, "-m", "benchmarks.search_build", "--items", str(n_items),
               "--out", str(target)] + (["--embedding", str(embedding)] if embedding else [])
    with (out / f"build-{n_items}.log").open("wb") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, timeout=3600)
    return dict(json.loads(target.read_text()))


def report(results: dict[str, Any]) -> str:
    lat = results["latency"]
    lines = [f"# Search benchmark ({results['when']})", "",
             (f"Machine load (1-minute average) before / after: {results['load_before']:.2f} / "
             f"{results['load_after']:.2f} on {os.cpu_count()} cores."), "",
             f"## /search, cache misses, one query at a time, {lat['items']:,} items", "",
             "| queries | n | p50 ms | p99 ms | mean ms |", "|---|---|---|---|---|"]
    for kind in ("all", *KINDS):
        s = lat["latency_ms"][kind]
        lines.append(f"| {kind} | {s['n']:.0f} | {s['p50']} | {s['p99']} | {s['mean']} |")
    lines += ["", (f"CPU per query: p50 {lat['cpu_ms']['p50']} ms, p99 {lat['cpu_ms']['p99']} ms. "
              f"Degraded answers: {lat['degraded']}."), "",
              "| stage | p50 ms | p99 ms | mean ms |", "|---|---|---|---|"]
    for stage, s in sorted(lat["stages_ms"].items()):
        lines.append(f"| {stage} | {s['p50']} | {s['p99']} | {s['mean']} |")
    lines += ["", "## Index build per catalogue size", "", *build_table(results["builds"])]
    return "\n".join(lines) + "\n"


def build_table(builds: list[dict[str, Any]]) -> list[str]:
    """Markdown rows of measure_build's results (benchmarks/search_build.py)."""
    lines = [("| items | catalogue | build s | RSS growth MiB | array MiB | vocabulary | "
              "parse + BM25 p50 / p99 ms |"), "|---|---|---|---|---|---|---|"]
    for b in builds:
        arrays = sum(b["array_bytes"].values()) / 2**20
        text = b["text_path_ms"]
        lines.append(f"| {b['items']:,} | {b['catalogue']} | {b['build_s']} | "
                     f"{b['rss_growth_mib']} | {arrays:.1f} | {b['vocabulary']:,} | "
                     f"{text['p50']:.3f} / {text['p99']:.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000, help="catalogue of the latency run")
    parser.add_argument("--sizes", default="100000,1000000", help="catalogues of the build runs")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--models-root", type=Path, help="a trained benchmark set (else one "
                        "is trained and cached, as benchmarks/models.py does)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    for var in ("BENTOML_DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
        os.environ.setdefault(var, "true")
    when = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or Path("reports/search") / f"bench-{when}"
    out.mkdir(parents=True, exist_ok=True)
    root = args.models_root or default_cache_root() / code_fingerprint() / \
        f"{args.items}-u1000-e1"
    models = BenchModels.read(root) if args.models_root else ensure_models(
        args.items, root, 1000, 1, out / "train.log")
    load_before = os.getloadavg()[0]
    latency = asyncio.run(measure_latency(models, args.queries))
    builds = [measure_build(n, models.workdir / "embedding" if n == models.n_items else None,
                            out) for n in (int(s) for s in args.sizes.split(","))]
    results = {"when": when, "load_before": load_before, "load_after": os.getloadavg()[0],
               "latency": latency, "builds": builds, "models_root": str(root)}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "report.md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
