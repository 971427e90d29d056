"""How much to run: the full suite's defaults and the --quick profile, as one frozen dataclass."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from training.config import TwoTowerConfig


@dataclass(frozen=True)
class BenchSettings:
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    main_size: int = 100_000  # catalogue of the peer, cache and batching comparisons
    users: int = 1000  # synthetic users (known users the load generator asks for)
    # RECSYS_WORKERS of the service and of the no-op floor: one API process per core, as the
    # naive server's thread pool and ONNX Runtime's default threads use every core too. The
    # peers phase also runs a one-worker service ("service-miss-1w") to show what a worker adds.
    # The scale phase runs one worker: each worker holds its own copy of the models.
    workers: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    # The training default (8): after 1 epoch the item vectors of the synthetic catalogue sit in
    # a narrow cone (mean vector norm 0.92 at 100K items), IVF then needs 672 of 1,024 lists for
    # recall@100 0.95 where the trained model needs the default 84 (recall 0.96).
    epochs: int = field(default_factory=lambda: TwoTowerConfig().epochs)
    concurrencies: tuple[int, ...] = (1, 4, 8, 16, 64)
    duration_s: float = 5.0  # per measured wrk run
    warmup_s: float = 1.5  # a discarded wrk run before each measured one
    repeats: int = 3  # measured runs per (target, concurrency); medians are reported
    max_requests: int = 20_000  # per wrk run: the run stops at this or at duration_s
    timeout_s: float = 5.0  # wrk request timeout
    zipf_s: float = 1.0
    zipf_concurrency: int = 16
    zipf_duration_s: float = 10.0
    hot_users: int = 64  # distinct users of the cache-hit run (all cached after warm-up)
    batching_concurrencies: tuple[int, ...] = (1, 8, 32)
    # (name, RECSYS_MAX_BATCH_SIZE) per variant; None runs the model services with
    # RECSYS_BATCHING=false (APIs not batchable: one request per call).
    batching_variants: tuple[tuple[str, int | None], ...] = (("on", 8192), ("off", None))
    batching_repeats: int = 2
    # Budget, retrieval (and user tower) and ranking timeouts (ms) of the services topology. The
    # defaults (150/30/60) suit the inline path; on 2 CPU cores a batched ranker call took
    # 136-143 ms at 8 connections, so with them the ranker breaker stayed open and the batching
    # runs measured the in-process fallback ranker instead of batching.
    services_timeouts_ms: tuple[float, float, float] = (500.0, 100.0, 300.0)
    # distinct /search bodies of the search phase (benchmarks/search_http.py): its cache-miss
    # runs ask each at most once and skip some (threads run unevenly), so they must outnumber
    # the phase's measured requests by a margin
    search_bodies: int = 100_000
    inprocess_requests: int = 400
    inprocess_concurrency: tuple[int, ...] = (1, 8)
    index_queries: int = 300
    probe_requests: int = 400  # cap of the one-at-a-time runs of the scale phase
    scale_topologies: tuple[str, ...] = ("inline", "services")
    scale_duration_s: float = 5.0
    slo_p99_ms: float = 100.0  # throughput of a target = best req/s with client p99 at most this
    max_load: float = 1.5  # refuse to start a full run above this one-minute load average
    gpu_batching: bool = True  # rerun batching and scale on the GPU when there is one
    quick: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def quick_profile(cls) -> BenchSettings:
        """< 3 minutes with cached models: one small catalogue, two concurrencies, short runs."""
        return cls(sizes=(10_000,), main_size=10_000, users=500, epochs=1, concurrencies=(1, 16),
                   duration_s=3.0, warmup_s=1.0, repeats=1, max_requests=5000,
                   zipf_concurrency=16, zipf_duration_s=4.0, batching_concurrencies=(1, 16),
                   batching_variants=(("on", 8192), ("off", None)), batching_repeats=1,
                   inprocess_requests=150, inprocess_concurrency=(1, 8), index_queries=100,
                   probe_requests=150, scale_topologies=("inline",), scale_duration_s=3.0,
                   max_load=float("inf"), quick=True)

    def services_env(self, gpu: int = 0) -> dict[str, str]:
        """Settings of a topology=services server: its timeouts, and RECSYS_GPU with a GPU."""
        budget, retrieval, ranking = self.services_timeouts_ms
        # the user tower is a model-service hop too: it gets the retrieval stage's timeout
        env = {"RECSYS_BUDGET_MS": f"{budget:g}", "RECSYS_TOWER_TIMEOUT_MS": f"{retrieval:g}",
               "RECSYS_RETRIEVAL_TIMEOUT_MS": f"{retrieval:g}",
               "RECSYS_RANKING_TIMEOUT_MS": f"{ranking:g}"}
        return env | {"RECSYS_GPU": str(gpu)} if gpu else env

    def with_sizes(self, sizes: tuple[int, ...]) -> BenchSettings:
        """Use these catalogue sizes; the main size is 100K when listed, else the largest below it."""
        below = [s for s in sizes if s <= 100_000] or [min(sizes)]
        main = 100_000 if 100_000 in sizes else max(below)
        return replace(self, sizes=tuple(sorted(sizes)), main_size=main)
