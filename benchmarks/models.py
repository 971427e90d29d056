"""Benchmark models per catalogue size: synthetic data, real training, MLflow registry, BentoML export.

Each size gets its own directory (MLflow sqlite store, bundles, BentoML home, models file) so
sizes never share registry versions. Training runs in a child process (`python -m
benchmarks.models --items N --root DIR`) so torch and its memory leave with it; a directory
that already holds `bench-models.json` is reused as is.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from recsys.app.models_file import ModelRefs

if TYPE_CHECKING:
    from registry import ModelSet

MARKER = "bench-models.json"
CHALLENGER_MARKER = "bench-challenger.json"  # a second set registered beside it (alias challenger)
CHALLENGER_SEED = 1
REPO_ROOT = Path(__file__).resolve().parent.parent
# Sources whose change can change a trained bundle or how it is exported and served.
SOURCE_DIRS = ("recsys", "training", "registry")
KINDS = ("embedding", "ranker", "fallback_ranker")
# training.ranker scores 1024 queries against the whole catalogue at once when sampling hard
# negatives: [1024, n] float32 plus int64 argpartition output is ~12 GB at 1M items.


@dataclass(frozen=True)
class BenchModels:
    """One trained, registered and exported model set (alias champion) for one catalogue size."""

    n_items: int
    root: Path
    bentoml_home: Path
    models_file: Path  # {"champion": {kind: BentoML tag}}
    workdir: Path  # bundles: workdir/embedding, workdir/ranker, workdir/fallback_ranker
    tracking_uri: str
    n_users: int
    train_seconds: float

    def refs(self) -> ModelRefs:
        tags = json.loads(self.models_file.read_text())["champion"]
        return ModelRefs("champion", {k: self.workdir / k for k in KINDS}, tags)

    def env(self) -> dict[str, str]:
        """Environment for `bentoml serve service:Recommender` over these models."""
        return {"BENTOML_HOME": str(self.bentoml_home), "RECSYS_MODELS_FILE": str(self.models_file)}

    def user_ids(self) -> list[str]:
        """Known users (those with a history in the embedding bundle), in bundle order."""
        with np.load(self.workdir / "embedding" / "user_histories.npz", allow_pickle=False) as data:
            return [str(u) for u in data["user_ids"]]

    @classmethod
    def read(cls, root: Path) -> BenchModels:
        """The set under `root` (paths follow the directory if it was moved)."""
        data = json.loads((root / MARKER).read_text())
        return cls(data["n_items"], root, root / "bentoml", root / "serving-models.json",
                   root / "work", data["tracking_uri"], data["n_users"], data["train_seconds"])


def code_fingerprint() -> str:
    """sha256 (12 hex) of every .py file that shapes the models: a cache key for trained sets."""
    digest = hashlib.sha256()
    for directory in SOURCE_DIRS:
        for path in sorted((REPO_ROOT / directory).rglob("*.py")):
            digest.update(path.relative_to(REPO_ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def default_cache_root() -> Path:
    """Where trained sets are kept between runs: $XDG_CACHE_HOME/recsys-benchmarks."""
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "recsys-benchmarks"


def ensure_models(n_items: int, root: Path, n_users: int, epochs: int, log_path: Path,
                  timeout_s: float = 1800) -> BenchModels:
    """Reuse the models under `root` when present, else train them in a child process."""
    if (root / MARKER).is_file():
        models = BenchModels.read(root)
        if models.n_items == n_items:
            return models
    root.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _train_in_child(["--items", str(n_items), "--root", str(root), "--users", str(n_users),
                     "--epochs", str(epochs)], log_path, timeout_s, f"training {n_items} items")
    return BenchModels.read(root)


def train_and_export(n_items: int, root: Path, n_users: int, epochs: int) -> BenchModels:
    """Synthetic data → two-tower → rankers → register (champion) → export to a BentoML home.

    The offline evaluation step is skipped (its ALS grid and [users, n_items] float64 score
    matrices take minutes and gigabytes at 1M items, and quality is not what is measured here).
    """
    from registry import Registry, bentoml_home, export_to_bentoml

    start = time.perf_counter()
    uri, model_set = train_and_register(n_items, root, n_users, epochs, seed=0)
    registry = Registry(uri)
    registry.promote_versions(model_set)
    home = root / "bentoml"
    with bentoml_home(home):
        tags = export_to_bentoml(registry, "champion")
    models_file = root / "serving-models.json"
    models_file.write_text(json.dumps({"champion": tags}, indent=2))
    models = BenchModels(n_items, root, home, models_file, root / "work", uri, n_users,
                         round(time.perf_counter() - start, 1))
    payload = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(models).items()}
    (root / MARKER).write_text(json.dumps(payload, indent=2))
    return models


def train_and_register(n_items: int, root: Path, n_users: int, epochs: int,
                       seed: int) -> tuple[str, ModelSet]:
    """One model set trained with model seed `seed` on the synthetic data of `n_items` items
    (the same data whatever the seed) and registered under alias challenger in the store under
    `root`; its bundles in root/work (seed 0) or root/work-seed<seed>. Returns (tracking URI,
    the registered versions)."""
    import mlflow

    from registry import configure_tracking, log_bundle, register_model_set
    from training.config import PipelineConfig
    from training.pipeline import apply_overrides, embedding_step, load_prepared
    from training.settings import TrainingSettings
    from training.steps import train_rankers

    workdir = root / ("work" if seed == 0 else f"work-seed{seed}")
    settings = TrainingSettings(store_dir=root / "mlstore", workdir=workdir, epochs=epochs,
                                ranker_epochs=epochs, synthetic_users=n_users,
                                synthetic_items=n_items, seed=seed)
    config = apply_overrides(PipelineConfig(), settings)
    # Both cores: at 100K-1M items encoding the catalogue dominates, and these models are
    # benchmark fixtures, not results to reproduce bit for bit on another machine.
    config = replace(config, two_tower=replace(config.two_tower, threads=2),
                     ranker=replace(config.ranker, threads=2))
    uri = configure_tracking(settings.tracking_uri, store_dir=settings.store_dir)
    data = load_prepared(settings, config)
    with mlflow.start_run(run_name=f"benchmark-{n_items}" + (f"-seed{seed}" if seed else "")):
        embedding, embedding_uri = embedding_step(data, config, settings.workdir)
        rankers = train_rankers(data, embedding, config.ranker, config.fallback,
                                settings.workdir / "ranker", settings.workdir / "fallback_ranker",
                                config.evaluation)
        n_features = len(rankers.ranker.scaler.mean) + 2 * embedding.item_vectors.shape[1]
        example = {"features": np.zeros((4, n_features), dtype=np.float32)}
        ranker_uri = log_bundle(rankers.ranker.path, "ranker", example)
        fallback_uri = log_bundle(rankers.fallback.path, "fallback_ranker", example)
    return uri, register_model_set(embedding_uri, ranker_uri, fallback_uri)


def ensure_challenger(models: BenchModels, epochs: int, log_path: Path,
                      timeout_s: float = 1800) -> None:
    """A second set beside `models` in their registry, under alias challenger (model seed
    CHALLENGER_SEED, the same data and catalogue): what the chaos suite promotes and rolls
    back. Trained once in a child process, then kept with the set."""
    if (models.root / CHALLENGER_MARKER).is_file():
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _train_in_child(["--items", str(models.n_items), "--root", str(models.root), "--users",
                     str(models.n_users), "--epochs", str(epochs), "--challenger"], log_path,
                    timeout_s, "training the challenger")


def _train_in_child(args: list[str], log_path: Path, timeout_s: float, what: str) -> None:
    """`python -m benchmarks.models ARGS` in a child process, its output in `log_path`;
    RuntimeError with the log's tail when it fails."""
    command = [sys.executable, "-m", "benchmarks.models", *args]
    with log_path.open("wb") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s,
                               stdin=subprocess.DEVNULL, cwd=REPO_ROOT)
    if code != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{what} failed (exit {code}); log tail:\n{tail}")


def train_challenger(n_items: int, root: Path, n_users: int, epochs: int) -> dict[str, object]:
    """ensure_challenger's child: the second set trained and registered, the marker written."""
    start = time.perf_counter()
    _, model_set = train_and_register(n_items, root, n_users, epochs, seed=CHALLENGER_SEED)
    payload = {"versions": {kind: version for kind, _, version in model_set.items()},
               "seed": CHALLENGER_SEED, "train_seconds": round(time.perf_counter() - start, 1)}
    (root / CHALLENGER_MARKER).write_text(json.dumps(payload, indent=2))
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--challenger", action="store_true",
                        help="train and register a second set (alias challenger) beside the set "
                             "under --root")
    args = parser.parse_args()
    for var in ("BENTOML_DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
        os.environ.setdefault(var, "true")
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.challenger:
        print(json.dumps(train_challenger(args.items, args.root, args.users, args.epochs)))
        return
    models = train_and_export(args.items, args.root, args.users, args.epochs)
    print(json.dumps({"n_items": models.n_items, "train_seconds": models.train_seconds}))


if __name__ == "__main__":
    main()
