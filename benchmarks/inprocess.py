"""The engine's limit: build_runtime + RecommendPipeline.respond in a loop, no HTTP, no cache.

    python -m benchmarks.inprocess --models-root DIR --requests 500 --concurrency 1 8

Runs in its own process (the orchestrator stays free of ONNX Runtime and FAISS). Requests use
the same distinct (user, hour, device) pattern as recommend.lua; `concurrency` coroutines share
one event loop, as requests share the service's. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.models import BenchModels
from recsys.app.assembly import build_runtime
from recsys.context import DEVICES, Context
from recsys.pipeline.recommend import RecommendPipeline
from recsys.pipeline.request import RecommendRequest
from recsys.settings import ServingSettings
from recsys.telemetry import Telemetry


class StageClock(Telemetry):
    """Collects the pipeline's per-stage timings (seconds)."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)

    def observe(self, stage: str, seconds: float) -> None:
        self.seconds[stage].append(seconds)

    def summary(self) -> dict[str, dict[str, float]]:
        return {stage: {"mean_ms": round(1000 * float(np.mean(v)), 3),
                        "p99_ms": round(1000 * float(np.percentile(v, 99)), 3), "n": len(v)}
                for stage, v in sorted(self.seconds.items())}


def request_for(n: int, users: list[str]) -> RecommendRequest:
    u = len(users)
    context = Context(hour=(n // u) % 24, device=DEVICES[(n // (u * 24)) % len(DEVICES)])
    return RecommendRequest(users[n % u], 10, context=context)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(pipeline: RecommendPipeline, users: list[str], requests: int, concurrency: int,
                  offset: int) -> dict[str, Any]:
    numbers = itertools.count(offset)
    stop = offset + requests
    latencies: list[float] = []
    degraded = 0

    async def worker() -> None:
        nonlocal degraded
        for n in numbers:
            if n >= stop:
                return
            t = time.perf_counter()
            answer = await pipeline.respond(request_for(n, users))
            latencies.append(time.perf_counter() - t)
            degraded += bool(answer.result["degraded"])

    cpu, start = _cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(ms), "rps": round(len(ms) / wall, 1),
            "latency_ms": {f"p{p}": round(float(np.percentile(ms, p)), 3) for p in (50, 90, 95, 99)}
            | {"mean": round(float(ms.mean()), 3)},
            "cpu_cores": round((_cpu_seconds() - cpu) / wall, 3), "degraded": degraded}


async def run(models: BenchModels, requests: int, concurrencies: list[int],
              warmup: int) -> dict[str, Any]:
    settings = ServingSettings(models_file=models.models_file, redis_url=None, topology="inline",
                               shadow_fraction=0.0)
    clock = StageClock()
    started = time.perf_counter()
    runtime = build_runtime(settings, [models.refs()], clock)
    await runtime.start()
    load_s = time.perf_counter() - started
    users = models.user_ids()
    await measure(runtime.pipeline, users, warmup, 1, 10_000_000)
    results, offset = [], 0
    for concurrency in concurrencies:
        clock.seconds.clear()
        run = await measure(runtime.pipeline, users, requests, concurrency, offset)
        results.append({**run, "stages": clock.summary()})
        offset += requests
    await runtime.aclose()
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"n_items": models.n_items, "load_s": round(load_s, 2), "runs": results,
            "peak_rss_mb": round(peak_rss_mb, 1),
            "ranked_candidates": settings.ranked_candidates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-root", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()
    models = BenchModels.read(args.models_root)
    print(json.dumps(asyncio.run(run(models, args.requests, args.concurrency, args.warmup))))


if __name__ == "__main__":
    main()
