"""The suite's three phases: peers (service vs floor, naive server, engine), batching, scale.

Each returns plain dicts (JSON-ready). Servers are always stopped in `finally` blocks; every wrk
run is bounded by duration and request count.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from benchmarks import promtext, servers
from benchmarks.load import LoadResult, LoadSpec, run_wrk
from benchmarks.models import BenchModels
from benchmarks.procstats import RssSampler
from benchmarks.settings import BenchSettings
from devtools.processes import QUIET_ENV, REPO_ROOT, ServerProcess, ServerStartError

MODEL_ENDPOINTS = ("/score_champion", "/encode_champion")


class Session:
    """Shared state of one suite run: output directory, logs, distinct-request offsets."""

    def __init__(self, out: Path, settings: BenchSettings) -> None:
        self.out, self.settings = out, settings
        self.logs = out / "logs"
        self.offsets: dict[str, int] = {}
        self.progress: list[str] = []

    def log(self, message: str) -> None:
        print(message, flush=True)
        self.progress.append(message)

    def users_file(self, models: BenchModels) -> Path:
        path = self.out / f"users-{models.n_items}.txt"
        if not path.is_file():
            path.write_text("\n".join(models.user_ids()) + "\n")
        return path

    def next_offset(self, key: str, used: int) -> int:
        """First request number for the next distinct run against `key`, after `used` more."""
        start = self.offsets.get(key, 0)
        self.offsets[key] = start + used
        return start


@contextmanager
def running(*items: ServerProcess) -> Iterator[RssSampler]:
    """Start the servers together (stopping every one on the way out), sample their RSS."""
    with ExitStack() as stack:
        for server in items:
            stack.callback(server.stop)
            server.launch()
        for server in items:
            server.wait_ready()
        sampler = RssSampler(lambda: {s.name: s.pid for s in items if s.process is not None})
        sampler.start()
        try:
            yield sampler
        finally:
            sampler.stop()


def summarize_metrics(before: str, after: str) -> dict[str, Any]:
    """Server-side view of one run from two /metrics scrapes of a BentoML server."""
    if not before or not after:
        return {}
    samples = promtext.delta(before, after)
    stages = {stage: {"mean_ms": round(h.mean * 1000, 3), "p50_ms": round(h.quantile(0.5) * 1000, 3),
                      "p99_ms": round(h.quantile(0.99) * 1000, 3), "count": int(h.count)}
              for stage, h in promtext.histograms(samples, "recsys_stage_seconds", "stage").items()
              if h.count}
    batches = {endpoint: {"mean_rows": round(h.mean, 1), "batches": int(h.count)}
               for endpoint, h in promtext.histograms(
                   samples, "bentoml_service_adaptive_batch_size", "method_name").items()
               if h.count}
    codes: dict[str, dict[str, int]] = {}
    for (name, labels), value in samples.items():
        label = dict(labels)
        if name == "bentoml_service_request_total" and value and \
                label.get("endpoint") not in ("/readyz", "/livez", "/metrics", "/healthz"):
            key = f"{label.get('service_name', '?')}{label.get('endpoint', '')}"
            codes.setdefault(key, {})[label.get("http_response_code", "?")] = int(value)
    fallbacks = {dict(labels).get("reason", "?"): int(v) for (n, labels), v in samples.items()
                 if n == "recsys_fallbacks_total" and v}
    lookups = {dict(labels).get("level", "?"): int(v) for (n, labels), v in samples.items()
               if n == "recsys_cache_lookups_total" and dict(labels).get("kind") == "results" and v}
    return {"stages": stages, "batches": batches, "requests_by_code": codes,
            "fallbacks": fallbacks, "cache_lookups": lookups}


def prime(spec: LoadSpec) -> None:
    """Ask once for every hot-set user (the keys recommend.lua's hot mode uses) so all are cached."""
    users = [u for u in spec.users_file.read_text().splitlines() if u][:spec.hot_users]
    with httpx.Client(base_url=spec.url, timeout=30.0) as client:
        for user in users:
            client.post(spec.path, json={"user_id": user, "k": spec.k,
                                         "context": {"hour": 12, "device": "web"}})


def measured_run(session: Session, target: str, server: ServerProcess, spec: LoadSpec,
                 extra: dict[str, Any] | None = None) -> LoadResult:
    """A discarded warm-up run, then the measured one with /metrics scraped around it."""
    s = session.settings
    if spec.mode == "hot":
        prime(spec)
    if s.warmup_s > 0:
        # distinct: other keys (k + 1) so the measured run still misses; hot: primes the cache
        k = spec.k + 1 if spec.mode == "distinct" else spec.k
        run_wrk(target, replace(spec, duration_s=s.warmup_s, max_requests=0, k=k), [server.pid])
    before = server.metrics()
    result = run_wrk(target, spec, [server.pid])
    result.extra = {**result.extra, **(extra or {}), **summarize_metrics(before, server.metrics())}
    if spec.mode == "distinct":  # past every number a thread sent: threads run unevenly
        used = max(result.extra["next_offset"] - spec.offset, result.requests + spec.connections)
        session.next_offset(target, used)
    session.log(f"  {target:<22} c={spec.connections:<3} {result.rps:8.1f} req/s  p50 "
                f"{result.latency_ms['p50']:7.2f}  p99 {result.latency_ms['p99']:7.2f} ms  "
                f"non-2xx {result.non_2xx}  client {result.cpu['client_cores']:.2f} / other "
                f"{result.cpu['other_cores']:.2f} cores")
    return result


def load_spec(session: Session, target: str, server: ServerProcess, users: Path,
              connections: int, mode: str = "distinct", **overrides: Any) -> LoadSpec:
    s = session.settings
    base = LoadSpec(server.url, users, connections, s.duration_s, mode=mode,
                    max_requests=s.max_requests, timeout_s=s.timeout_s, zipf_s=s.zipf_s,
                    hot_users=s.hot_users)
    if mode == "distinct":
        base = replace(base, offset=session.next_offset(target, 0))
    return replace(base, **overrides)


def run_inprocess(models: BenchModels, settings: BenchSettings, log: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.inprocess", "--models-root", str(models.root),
               "--requests", str(settings.inprocess_requests), "--concurrency",
               *map(str, settings.inprocess_concurrency)]
    return _json_child(command, log, timeout_s=600)


def run_indexbench(models: BenchModels, settings: BenchSettings, log: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.indexbench", "--models-root", str(models.root),
               "--queries", str(settings.index_queries)]
    return _json_child(command, log, timeout_s=900)


def _json_child(command: list[str], log: Path, timeout_s: float) -> dict[str, Any]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as err:
        out = subprocess.run(command, stdout=subprocess.PIPE, stderr=err, timeout=timeout_s, check=False,
                             cwd=REPO_ROOT, env={**os.environ, **QUIET_ENV})
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:4])} failed ({out.returncode}): "
                           f"{log.read_text(errors='replace')[-2000:]}")
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def peers(session: Session, models: BenchModels) -> dict[str, Any]:
    """Service (miss, hit, Zipf), no-op floor, naive server; repeats interleaved across targets."""
    s = session.settings
    users = session.users_file(models)
    redis = servers.redis(session.logs / "redis-peers").start()
    service = servers.recommender(models, redis, session.logs / "service-inline.log",
                                  workers=s.workers)
    floor = servers.noop(session.logs / "noop.log", workers=s.workers)
    naive = servers.naive(models, session.logs / "naive.log")
    targets = [("service-miss", service, "distinct", 10), ("service-hit", service, "hot", 9),
               ("noop", floor, "distinct", 10), ("naive", naive, "distinct", 10)]
    started = [service, floor, naive]
    single_redis = None
    if s.workers > 1:  # its own Redis: the same request numbers must not hit the other's L2
        single_redis = servers.redis(session.logs / "redis-peers-1w").start()
        single = servers.recommender(models, single_redis, session.logs / "service-inline-1w.log",
                                     workers=1, suffix="-1w")
        targets.insert(1, ("service-miss-1w", single, "distinct", 10))
        started.append(single)
    runs: list[dict[str, Any]] = []
    try:
        with running(*started) as sampler:
            startup = {x.name: x.startup_s for x in started}
            session.log(f"peers on {models.n_items:,} items; start-up s (started together): "
                        f"{startup}")
            for repeat in range(s.repeats):
                session.log(f" repeat {repeat + 1}/{s.repeats}")
                for c in s.concurrencies:
                    for target, server, mode, k in targets:
                        spec = load_spec(session, target, server, users, c, mode, k=k)
                        result = measured_run(session, target, server, spec, {"repeat": repeat})
                        runs.append(result.as_dict())
                spec = load_spec(session, "service-zipf", service, users, s.zipf_concurrency,
                                 "zipf", k=20 + repeat, duration_s=s.zipf_duration_s,
                                 seed=repeat + 1)
                zipf = run_wrk("service-zipf", spec, [service.pid])  # cold: no warm-up run
                zipf.extra = {**zipf.extra, "repeat": repeat}
                session.log(f"  service-zipf           c={spec.connections:<3} {zipf.rps:8.1f} "
                            f"req/s  hit rate {zipf.hit_rate}")
                runs.append(zipf.as_dict())
            rss = sampler.stop()
    finally:
        redis.stop()
        if single_redis is not None:
            single_redis.stop()
    session.log(" in-process engine")
    inprocess = run_inprocess(models, s, session.logs / "inprocess.log")
    return {"n_items": models.n_items, "runs": runs, "inprocess": inprocess,
            "startup_s": startup, "peak_rss_mb": rss, "workers": s.workers}


def batching(session: Session, models: BenchModels, gpu: int = 0) -> dict[str, Any]:
    """topology=services per batching variant: RECSYS_MAX_BATCH_SIZE, or batching off."""
    s = session.settings
    users = session.users_file(models)
    out: dict[str, Any] = {"n_items": models.n_items, "gpu": gpu, "variants": {}}
    for name, max_batch in s.batching_variants:
        try:
            out["variants"][name] = _batching_variant(session, models, users, name, max_batch, gpu)
        except (ServerStartError, RuntimeError, OSError) as error:
            lines = [line for line in str(error).splitlines() if line.strip()]
            out.setdefault("errors", {})[name] = lines[-1][:500] if lines else repr(error)
            session.log(f"batching {name} failed: {out['errors'][name]}")
    return out


def _batching_variant(session: Session, models: BenchModels, users: Path, name: str,
                      max_batch: int | None, gpu: int) -> dict[str, Any]:
    s = session.settings
    suffix = "-gpu" if gpu else ""
    redis = servers.redis(session.logs / f"redis-batching-{name}{suffix}").start()
    extra = s.services_env(gpu)
    service = servers.recommender(models, redis,
                                  session.logs / f"service-services-{name}{suffix}.log",
                                  topology="services", max_batch_size=max_batch,
                                  batching=max_batch is not None, extra=extra)
    runs = []
    try:
        with running(service) as sampler:
            session.log(f"batching {name} ({_variant_setting(max_batch)}); "
                        f"start-up {service.startup_s} s")
            for repeat in range(s.batching_repeats):
                for c in s.batching_concurrencies:
                    target = f"batching-{name}"
                    spec = load_spec(session, target, service, users, c)
                    result = measured_run(session, target, service, spec, {"repeat": repeat})
                    runs.append(result.as_dict())
            rss = sampler.stop()
    finally:
        redis.stop()
    return {"max_batch_size": max_batch, "setting": _variant_setting(max_batch), "runs": runs,
            "startup_s": service.startup_s, "peak_rss_mb": rss}


def _variant_setting(max_batch: int | None) -> str:
    return "RECSYS_BATCHING=false" if max_batch is None else f"RECSYS_MAX_BATCH_SIZE={max_batch}"


def _from_peers(peers_result: dict[str, Any]) -> dict[str, Any]:
    """The inline service's one-at-a-time and ~8-connection miss runs of the peers phase."""
    misses = [r for r in peers_result["runs"] if r["target"] == "service-miss"]
    one = next(r for r in misses if r["spec"]["connections"] == 1)
    loaded = min(misses, key=lambda r: abs(r["spec"]["connections"] - 8))
    rss = {k: v for k, v in peers_result["peak_rss_mb"].items()
           if k.startswith("recommender-inline:")}
    return {"startup_s": peers_result["startup_s"]["recommender-inline"], "peak_rss_mb": rss,
            "c1": one, "c8": loaded, "from_peers_phase": True}


def scale(session: Session, all_models: dict[int, BenchModels], gpu: int = 0,
          peers_result: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per catalogue size: index build, retrieval latency and recall, end-to-end, RSS per process.

    One API worker throughout (memory per catalogue size; RECSYS_WORKERS=N holds N copies). The
    main size's inline numbers come from the peers phase when it ran one worker too.
    """
    s = session.settings
    out: dict[str, Any] = {}
    for size, models in sorted(all_models.items()):
        session.log(f"scale {size:,} items")
        entry: dict[str, Any] = {"train_s": models.train_seconds}
        entry["index"] = run_indexbench(models, s, session.logs / f"indexbench-{size}.log")
        session.log(f"  index {entry['index'].get('kind')} build {entry['index'].get('build_s')} s, "
                    f"top-1000 p99 {entry['index']['latency_top1000_ms']['p99']} ms, "
                    f"recall@100 {entry['index']['recall_at_100']}")
        users = session.users_file(models)
        for topology in s.scale_topologies:
            if topology == "inline" and peers_result and peers_result["n_items"] == size \
                    and peers_result.get("workers", 1) == 1 and not gpu:
                entry[topology] = _from_peers(peers_result)
                continue
            redis = servers.redis(session.logs / f"redis-scale-{size}-{topology}").start()
            extra = s.services_env(gpu) if topology == "services" else {}
            service = servers.recommender(models, redis,
                                          session.logs / f"service-{topology}-{size}.log",
                                          topology=topology, extra=extra)
            try:
                with running(service) as sampler:
                    target = f"scale-{size}-{topology}"
                    one = measured_run(session, target, service, load_spec(
                        session, target, service, users, 1, duration_s=s.scale_duration_s,
                        max_requests=s.probe_requests))
                    eight = measured_run(session, target, service, load_spec(
                        session, target, service, users, 8, duration_s=s.scale_duration_s))
                    rss = sampler.stop()
            finally:
                redis.stop()
            entry[topology] = {"startup_s": service.startup_s, "peak_rss_mb": rss,
                               "c1": one.as_dict(), "c8": eight.as_dict()}
        out[str(size)] = entry
    return out
