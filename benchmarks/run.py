"""Run the serving benchmark suite and write reports/<timestamp>/report.md (+ JSON and plots).

    python -m benchmarks.run                  # full: 10K, 100K, 1M items (< 25 min, models cached)
    python -m benchmarks.run --quick          # < 3 min with cached models: 10K items, short runs
    python -m benchmarks.run --sizes 10000,100000 --out reports/mine
    python -m benchmarks.run --sizes 100000 --phases search   # /search beside its no-op floor

Phases: models (train + register + export per size, cached by code fingerprint), peers
(service miss / hit / Zipf, no-op BentoML floor, naive FastAPI server, in-process engine),
batching (topology=services, adaptive batching variants), scale (index build, retrieval latency
and recall, end-to-end latency and RSS per catalogue size), search (/search cache misses against
the no-op floor's /search). See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import traceback
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import machine, phases, report, search_http
from benchmarks.load import LoadError, wrk_version
from benchmarks.models import BenchModels, code_fingerprint, default_cache_root, ensure_models
from benchmarks.settings import BenchSettings

QUIET = {"BENTOML_DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
         "TQDM_DISABLE": "1"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small catalogue, short runs (< 3 min)")
    parser.add_argument("--sizes", type=lambda v: tuple(int(x) for x in v.split(",")),
                        help="catalogue sizes, comma-separated (default 10000,100000,1000000)")
    parser.add_argument("--out", type=Path, help="output directory (default reports/<timestamp>)")
    parser.add_argument("--models-dir", type=Path,
                        help=f"trained model cache (default {default_cache_root()}/<code fingerprint>)")
    parser.add_argument("--phases", default="peers,batching,scale,search",
                        help="comma-separated subset of peers,batching,scale,search")
    parser.add_argument("--repeats", type=int, help="override measured repeats per point")
    parser.add_argument("--workers", type=int,
                        help="API workers of the service and the no-op floor (default: one per core)")
    parser.add_argument("--duration", type=float, help="override seconds per measured wrk run")
    parser.add_argument("--force", action="store_true",
                        help="run a full suite even when the load average is above --max-load")
    parser.add_argument("--max-load", type=float, help="refuse a full run above this load average")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> BenchSettings:
    settings = BenchSettings.quick_profile() if args.quick else BenchSettings()
    if args.sizes:
        settings = settings.with_sizes(args.sizes)
    if args.repeats:
        settings = replace(settings, repeats=args.repeats, batching_repeats=args.repeats)
    if args.duration:
        settings = replace(settings, duration_s=args.duration, scale_duration_s=args.duration)
    if args.max_load is not None:
        settings = replace(settings, max_load=args.max_load)
    if args.workers:
        settings = replace(settings, workers=args.workers)
    return settings


def models_root(args: argparse.Namespace, fingerprint: str) -> Path:
    if args.models_dir:
        return args.models_dir
    cache = default_cache_root()
    if cache.is_dir():  # sets trained from other code versions are stale: drop them
        for stale in cache.iterdir():
            if stale.is_dir() and stale.name != fingerprint and any(stale.glob("*/bench-models.json")):
                shutil.rmtree(stale, ignore_errors=True)
    return cache / fingerprint


def prepare_models(session: phases.Session, root: Path) -> dict[int, BenchModels]:
    s = session.settings
    out = {}
    for size in s.sizes:
        started = time.perf_counter()
        directory = root / f"{size}-u{s.users}-e{s.epochs}"
        cached = (directory / "bench-models.json").is_file()
        session.log(f"models {size:,} items: {'cached' if cached else 'training'} ({directory})")
        out[size] = ensure_models(size, directory, s.users, s.epochs,
                                  session.logs / f"train-{size}.log")
        if not cached:
            session.log(f"  trained in {time.perf_counter() - started:.0f} s")
    return out


def gpu_note(gpu: dict[str, Any]) -> str:
    if gpu["available"]:
        return f"{gpu['nvidia_smi']}: batching and scale phases also run with RECSYS_GPU=1"
    return ("none detected (no nvidia-smi, onnxruntime providers without CUDA, "
            f"faiss GPUs {gpu['faiss_gpus']}): GPU batching and scale runs skipped")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(QUIET)
    settings = settings_from(args)
    try:
        wrk = wrk_version()
    except LoadError as error:
        print(error, file=sys.stderr)
        return 2
    load = machine.load_average()
    if not settings.quick and load > settings.max_load and not args.force:
        print(f"load average {load} > {settings.max_load}: the machine is busy and a full run would "
              "measure the other jobs. Run later, or pass --force (or --quick).", file=sys.stderr)
        return 3
    started = datetime.now(timezone.utc)
    stamp = started.strftime("%Y%m%d-%H%M%S") + ("-quick" if settings.quick else "")
    out = args.out or Path(__file__).resolve().parent.parent / "reports" / stamp
    out.mkdir(parents=True, exist_ok=True)
    session = phases.Session(out, settings)
    description = machine.describe()
    fingerprint = code_fingerprint()
    wanted = set(args.phases.split(","))
    results: dict[str, Any] = {"errors": {}}
    clock = time.perf_counter()
    session.log(f"benchmark -> {out} (load average {load}, wrk: {wrk})")
    try:
        all_models = prepare_models(session, models_root(args, fingerprint))
        results["models"] = {str(k): {"train_s": m.train_seconds, "users": m.n_users,
                                      "root": str(m.root)} for k, m in all_models.items()}
        main_models = all_models[settings.main_size]
        results.update(run_phases(session, wanted, all_models, main_models, description["gpu"]))
    except Exception as error:  # noqa: BLE001 - the report still records what ran
        results["errors"]["models"] = f"{type(error).__name__}: {error}"
        traceback.print_exc()
    results["meta"] = {"started": started.isoformat(timespec="seconds"), "quick": settings.quick,
                       "duration_s": round(time.perf_counter() - clock, 1),
                       "settings": asdict(settings), "machine": description,
                       "load_average_end": [round(v, 2) for v in os.getloadavg()],
                       "wrk": wrk, "code_fingerprint": fingerprint,
                       "gpu_note": gpu_note(description["gpu"]), "progress": session.progress}
    path = report.write(out, results)
    print(f"report: {path} ({results['meta']['duration_s']:.0f} s)")
    return 1 if results["errors"] else 0


def run_phases(session: phases.Session, wanted: set[str], all_models: dict[int, BenchModels],
               main_models: BenchModels, gpu: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"errors": {}}

    def attempt(name: str, call: Any) -> Any:
        try:
            return call()
        except Exception as error:  # noqa: BLE001 - one phase failing must not lose the others
            out["errors"][name] = f"{type(error).__name__}: {error}"[:3000]
            session.log(f"phase {name} failed: {type(error).__name__}: {str(error)[:500]}")
            traceback.print_exc()
            return None

    if "peers" in wanted:
        out["peers"] = attempt("peers", lambda: phases.peers(session, main_models))
    if "batching" in wanted:
        out["batching"] = attempt("batching", lambda: phases.batching(session, main_models))
    if "scale" in wanted:
        out["scale"] = attempt("scale", lambda: phases.scale(session, all_models,
                                                             peers_result=out.get("peers")))
    if "search" in wanted:
        out["search"] = attempt("search", lambda: search_http.search(session, main_models,
                                                                     all_models))
    use_gpu = gpu["available"] and session.settings.gpu_batching
    if use_gpu and "batching" in wanted:
        out["batching_gpu"] = attempt("batching_gpu",
                                      lambda: phases.batching(session, main_models, gpu=1))
    if use_gpu and "scale" in wanted:
        out["scale_gpu"] = attempt("scale_gpu", lambda: phases.scale(session, all_models, gpu=1))
    return out


if __name__ == "__main__":
    sys.exit(main())
