"""Precompute every user's /recommend list on Ray; Parquet, and optionally the precomputed tier.

    python -m batch --models-file serving-models.json --address local --users all --k 10 \\
        --out reports/batch/lists [--redis redis://localhost:6379/0]

The lists are computed with the service's own settings (RECSYS_* in the environment, read once
here, as the service reads them) and models. `--address`: `local` starts Ray in this process
(`--cpus`), `auto` joins the cluster this machine belongs to, `ray://host:10001` a remote one
through Ray Client; without it, RAY_ADDRESS, else a local Ray.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import batch
from batch import models
from batch.job import run_on_ray, select_users
from batch.scoring import ScoringSpec
from recsys.app.models_file import ModelRefs
from recsys.pipeline.recommend import DEFAULT_K
from recsys.settings import ServingSettings
from recsys.stores.cache_config import CacheConfig

QUIET = {"BENTOML_DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
         "DO_NOT_TRACK": "true", "RAY_USAGE_STATS_ENABLED": "0"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m batch", description=__doc__.splitlines()[0])
    parser.add_argument("--models-file", type=Path,
                        help="served tags (python -m registry export); bundles from BENTOML_HOME "
                             "unless --bundle")
    parser.add_argument("--alias", default="champion", help="alias of the models file to score")
    parser.add_argument("--bundle", type=Path, metavar="WORKDIR",
                        help="a directory holding embedding/, ranker/ and fallback_ranker/")
    parser.add_argument("--address", help="local | auto | ray://host:10001 (default RAY_ADDRESS, "
                                           "else local)")
    parser.add_argument("--cpus", type=int, help="CPUs of a local Ray (default: all)")
    parser.add_argument("--actors", type=int, help="scorers, one CPU each (default: the "
                                                   "cluster's CPUs)")
    parser.add_argument("--users", default="all", help="all | top:N (the most active N)")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help="items per list")
    parser.add_argument("--batch-size", type=int, default=64, help="users per batch")
    parser.add_argument("--out", required=True, help="Parquet directory (or s3://... URI)")
    parser.add_argument("--redis", help="the service's Redis: read users' events, write the "
                                        "precomputed tier")
    parser.add_argument("--ttl-s", type=float, default=24 * 3600.0,
                        help="life of a precomputed list in Redis")
    parser.add_argument("--ship-code", action="store_true",
                        help="upload recsys/ and batch/ to the cluster (runtime_env py_modules): "
                             "for a cluster without this project installed")
    args = parser.parse_args(argv)
    if args.models_file is None and args.bundle is None:
        parser.error("give --models-file, --bundle, or both")
    if args.redis and args.models_file is None:
        parser.error("--redis needs --models-file: the tier is keyed by the tags the service "
                     "serves")
    generation_ttl_s = CacheConfig().generation_ttl_s
    if not 0 < args.ttl_s < generation_ttl_s:
        parser.error(f"--ttl-s must be in (0, {generation_ttl_s:g}): a list must expire before "
                     "an idle user's event generation does")
    if args.k < 1 or args.batch_size < 1:
        parser.error("--k and --batch-size must be >= 1")
    return args


def model_refs(args: argparse.Namespace) -> ModelRefs:
    if args.bundle is not None:
        return models.from_workdir(args.bundle, args.models_file, args.alias)
    return models.from_models_file(args.models_file, args.alias)


def connect(args: argparse.Namespace) -> None:
    import ray

    import recsys

    runtime_env: dict[str, Any] = {"py_modules": [recsys, batch]} if args.ship_code else {}
    if args.address == "local":
        ray.init(address="local", num_cpus=args.cpus, runtime_env=runtime_env,
                 include_dashboard=False)
    else:
        ray.init(address=args.address, runtime_env=runtime_env)  # None: RAY_ADDRESS, or local


def main(argv: list[str] | None = None) -> None:
    for var, value in QUIET.items():
        os.environ.setdefault(var, value)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    service = ServingSettings()  # type: ignore[call-arg]  # every field from RECSYS_* or its default
    spec = ScoringSpec.for_batch(model_refs(args), service, args.k, args.redis, args.ttl_s)
    users = select_users(spec, args.users)
    connect(args)
    import ray

    actors = args.actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
    report = run_on_ray(spec, users, args.out, actors=actors, batch_size=args.batch_size)
    print(json.dumps({**report.as_dict(), "alias": args.alias,
                      "model_versions": spec.refs.versions,
                      "nodes": len([n for n in ray.nodes() if n["Alive"]]),
                      "tier": bool(args.redis)}))
    ray.shutdown()
