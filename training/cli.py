"""Command line: `python -m training run|seeds|tune|replay|search-eval|download`, the headless
twin of the notebooks."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from pydantic import ValidationError

from recsys.errors import RecsysError

# training.data.download.VARIANTS, named here so that --help imports no pandas (a test holds
# the two equal)
MOVIELENS_VARIANTS = ("ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m",
                      "ml-latest-small", "ml-latest")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train, evaluate and register the default models")
    run.add_argument("--data", type=Path, help="dataset path (default: RECSYS_DATA_PATH, "
                     "else the synthetic generator)")
    run.add_argument("--epochs", type=int, help="two-tower epochs (default from the config)")
    run.add_argument("--ensure-champion", action="store_true",
                     help="the main command's step: keep a champion trained on this data, else "
                          "promote the newest set trained on it, else train and promote one")
    run.add_argument("--promote", choices=("if-no-champion", "always", "never"),
                     default="if-no-champion", help="when to move the champion alias")
    seeds = sub.add_parser("seeds", help="train and evaluate once per seed, each in a throwaway "
                           "store; report means with 95%% intervals (training/seeds.py)")
    seeds.add_argument("--data", type=Path, help="dataset path (default: RECSYS_DATA_PATH, "
                       "else the synthetic generator)")
    seeds.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    seeds.add_argument("--out", type=Path, default=Path("reports/seeds"))
    seeds.add_argument("--jobs", type=int, default=1, help="seeds trained at once (one core each)")
    seeds.add_argument("--summarise-only", action="store_true",
                       help="only summarise the seed-N folders already under --out")
    tune = sub.add_parser("tune", help="search the two-tower's settings with Optuna on "
                          "validation NDCG@10, each trial a nested MLflow run (training/tuning.py)")
    tune.add_argument("--data", type=Path, help="dataset path (default: RECSYS_DATA_PATH, "
                      "else the synthetic generator)")
    tune.add_argument("--trials", type=int, default=20)
    tune.add_argument("--epochs", type=int, help="cap on each trial's epochs (default: each "
                      "encoder's own; early stopping ends most trials before)")
    tune.add_argument("--out", type=Path, default=Path("reports/tuning"))
    tune.add_argument("--seeds", type=int, nargs="+", help="training seeds each trial averages "
                      "its validation NDCG@10 over (default: the settings' seed)")
    tune.add_argument("--jobs", type=int, default=1, help="seeds of a trial trained at once")
    tune.add_argument("--encoders", nargs="+", choices=("pooled", "sequence"),
                      default=["pooled", "sequence"], help="user encoders the search draws")
    replay = sub.add_parser("replay", help="replay held-out interactions against a running "
                            "service (127.0.0.1 only): /recommend, then a click or view event")
    replay.add_argument("--url", default="http://127.0.0.1:3000")
    replay.add_argument("--data", type=Path, help="dataset path (default: RECSYS_DATA_PATH, "
                        "else the synthetic generator): the data the served models trained on")
    replay.add_argument("--rate", type=float, default=100.0, help="requests a second at most")
    replay.add_argument("--count", type=int, default=2000, help="requests to send")
    replay.add_argument("--k", type=int, default=10, help="items asked for per request")
    replay.add_argument("--report", type=Path, help="write the replay's counts here as JSON")
    search = sub.add_parser("search-eval", help="evaluate search offline on an embedding "
                            "bundle's data: known-item and personalised category search, "
                            "settings chosen on validation, reported on test "
                            "(training/search_eval.py)")
    search.add_argument("--embedding", type=Path, help="embedding bundle (default: the last "
                        "run's, RECSYS_WORKDIR/embedding)")
    search.add_argument("--data", type=Path, help="the dataset it was trained on (default: "
                        "RECSYS_DATA_PATH, else the synthetic generator)")
    search.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="query seeds")
    search.add_argument("--users", type=int, help="evaluate the first N users of each split")
    search.add_argument("--out", type=Path, default=Path("reports/search/eval"))
    download = sub.add_parser("download", help="download a public MovieLens dataset")
    download.add_argument("variant", choices=MOVIELENS_VARIANTS)
    download.add_argument("--dest", type=Path, default=Path("data"))
    return parser


def _run(args: argparse.Namespace) -> int:
    from training.pipeline import describe, ensure_champion, run_pipeline
    from training.settings import TrainingSettings

    overrides = {k: v for k, v in (("data_path", args.data), ("epochs", args.epochs)) if v}
    settings = TrainingSettings(**overrides)
    if args.ensure_champion:
        print(ensure_champion(settings))
        return 0
    result = run_pipeline(settings, promote=args.promote)
    print(result.report.table)
    print(json.dumps(describe(result), indent=2))
    return 0


def _seeds(args: argparse.Namespace) -> int:
    from training.seeds import run_seeds, summarise
    from training.settings import TrainingSettings

    if not args.summarise_only:
        data = args.data or TrainingSettings().data_path
        run_seeds(data, args.seeds, args.out, args.jobs)
    summarise(args.out)
    print((args.out / "summary.md").read_text())
    return 0


def _tune(args: argparse.Namespace) -> int:
    from registry import configure_tracking
    from training.config import PipelineConfig
    from training.pipeline import apply_overrides, load_prepared
    from training.settings import TrainingSettings
    from training.tuning import tune

    overrides = {k: v for k, v in (("data_path", args.data), ("epochs", args.epochs)) if v}
    settings = TrainingSettings(**overrides)
    config = apply_overrides(PipelineConfig(), settings)
    configure_tracking(settings.tracking_uri, store_dir=settings.store_dir)
    study = tune(load_prepared(settings, config), config.two_tower, args.trials, args.out,
                 seed=settings.seed, epochs=args.epochs, seeds=args.seeds, jobs=args.jobs,
                 encoders=args.encoders)
    print(f"best validation NDCG@10 {study.best_value:.4f} (trial {study.best_trial.number} of "
          f"{len(study.trials)}): {study.best_params}; report in {args.out}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    import asyncio

    from training.pipeline import load_dataset_of
    from training.replay import held_out, replay, write_report
    from training.settings import TrainingSettings

    settings = TrainingSettings(**({"data_path": args.data} if args.data else {}))
    interactions = held_out(load_dataset_of(settings).interactions, settings.replay_holdout)
    report = asyncio.run(replay(args.url, interactions, rate=args.rate, count=args.count,
                                k=args.k))
    print(report.summary())
    if args.report is not None:
        write_report(report, str(args.report))
    return 0 if report.failed == 0 else 1


def _search_eval(args: argparse.Namespace) -> int:
    from recsys.models.bundles import EmbeddingBundle
    from training.pipeline import load_dataset_of
    from training.replay import replay_cut
    from training.search_eval import SearchEvalConfig, evaluate_search, prepared_for, write_report
    from training.settings import TrainingSettings

    settings = TrainingSettings(**({"data_path": args.data} if args.data else {}))
    embedding = EmbeddingBundle.load(args.embedding or settings.workdir / "embedding")
    dataset = load_dataset_of(settings)
    if settings.replay_holdout:  # as training saw it (training.pipeline.load_prepared)
        dataset = replace(dataset, interactions=replay_cut(dataset.interactions,
                                                           settings.replay_holdout)[0])
    data = prepared_for(dataset, embedding)
    config = SearchEvalConfig(seeds=tuple(args.seeds), users=args.users)
    print(write_report(evaluate_search(data, embedding, config), args.out))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for var in ("MLFLOW_DISABLE_TELEMETRY", "BENTOML_DO_NOT_TRACK", "DO_NOT_TRACK"):
        os.environ.setdefault(var, "true")
    # torch's CPU tensors of 2 MB and more on transparent huge pages (read once, before torch's
    # first allocation): a full softmax over a large catalogue allocates its [N, items] logits
    # afresh every batch, above glibc's 32 MB mmap ceiling, and faulted them in 4 KB at a time
    # (a MovieLens 1M-sized set: 7.6M page faults an epoch's share of 1,500 users, 0.4M with
    # this). Where the kernel offers huge pages only on request (madvise), as here.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "download":
            from training.data import download_movielens

            print(download_movielens(args.variant, args.dest))
            return 0
        if args.command == "replay":
            return _replay(args)
        if args.command == "seeds":
            return _seeds(args)
        if args.command == "tune":
            return _tune(args)
        if args.command == "search-eval":
            return _search_eval(args)
        return _run(args)
    except (RecsysError, ValidationError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
