"""RecBole 1.2.1's SASRec on the project's split, scored by the project's protocol.

    python benchmarks/anchors/recbole_sasrec.py --split DIR --seeds 0 1 2 3 4 --out results.json

Runs in its own venv with RecBole (scripts/anchor_sasrec.sh), not the project's: it reads only
the files benchmarks/anchors/export_split.py wrote (DIR/ml.{train,valid,test}.inter).

RecBole's sequential benchmark mode takes pre-built sequences (item_id_list → item_id rows) and
augments nothing, so they are built here, as RecBole's own data_augmentation would: a train row
per train event after a user's first (history: up to MAX_ITEM_LIST_LENGTH earlier train
events), a valid row with the train events as history and a test row with train + valid events.
RecBole's full-sort evaluation of sequential models masks no history item; MaskedTrainer masks
the user's known items (train for valid, train + valid for test) as the project does, so the
test item is ranked against the full catalogue less those. Writes results.json and results.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

# RecBole's Trainer calls torch.load on its own checkpoint without weights_only=False, which
# torch >= 2.6 refuses (the checkpoint holds the Config object); torch reads this at call time.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import numpy as np
import pandas as pd
import recbole
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender import SASRec
from recbole.trainer import Trainer
from recbole.utils import init_logger, init_seed
from scipy import stats

# Importing recbole.model.sequential_recommender runs SINE's module-level
# torch.autograd.set_detect_anomaly(True), which doubles every training step's time.
torch.autograd.set_detect_anomaly(False)

PARTS = ("train", "valid", "test")
USER, ITEM, TIME, ITEMS = "user_id", "item_id", "timestamp", "item_id_list"
REPORTED = ("hit@10", "ndcg@10", "recall@50")
CONFIG: dict[str, Any] = {
    "n_layers": 2, "n_heads": 2, "hidden_size": 64, "inner_size": 256,
    "hidden_dropout_prob": 0.2, "attn_dropout_prob": 0.2, "hidden_act": "gelu",
    "layer_norm_eps": 1e-12, "initializer_range": 0.02, "loss_type": "CE",
    "MAX_ITEM_LIST_LENGTH": 50, "learning_rate": 1e-3, "train_batch_size": 256,
    "train_neg_sample_args": None, "epochs": 200, "stopping_step": 10, "eval_step": 1,
    "metrics": ["Hit", "NDCG", "Recall"], "topk": [10, 50], "valid_metric": "NDCG@10",
    "eval_batch_size": 4096, "eval_args": {"order": "TO", "mode": "full"},
    "benchmark_filename": list(PARTS), "load_col": {"inter": [USER, ITEMS, ITEM]},
    "alias_of_item_id": [ITEMS], "use_gpu": False, "reproducibility": True,
    "show_progress": False, "worker": 0, "metric_decimal_place": 6,
}


class MaskedTrainer(Trainer):
    """RecBole's Trainer whose full-sort scores also exclude each row's user's `known` items."""

    known: torch.Tensor | None = None  # [users, items] bool, by RecBole's internal ids
    best_epoch: int = -1

    def _full_sort_batch_eval(self, batched_data: Any) -> Any:
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if self.known is not None:
            scores = scores.masked_fill(self.known[interaction[USER]], -np.inf)
        return interaction, scores, positive_u, positive_i

    def _save_checkpoint(self, epoch: int, verbose: bool = True, **kwargs: Any) -> None:
        self.best_epoch = epoch  # fit saves only when the valid metric improves
        super()._save_checkpoint(epoch, verbose=verbose, **kwargs)


def read_events(split: Path) -> dict[str, pd.DataFrame]:
    """Each part's events in the project's time order (user, then the exported time rank)."""
    parts = {}
    for name in PARTS:
        frame = pd.read_csv(split / f"ml.{name}.inter", sep="\t", dtype=str)
        frame.columns = [c.split(":")[0] for c in frame.columns]
        parts[name] = frame.astype({TIME: float}).sort_values([USER, TIME], kind="stable")
    return parts


def sequence_rows(parts: dict[str, pd.DataFrame], max_len: int) -> dict[str, pd.DataFrame]:
    """RecBole benchmark rows (user, history of at most `max_len` items, target) per part."""
    histories: dict[str, list[str]] = defaultdict(list)
    rows: dict[str, list[tuple[str, str, str]]] = {name: [] for name in PARTS}
    for name in PARTS:
        for user, item in zip(parts[name][USER], parts[name][ITEM]):
            history = histories[user]
            if history:
                rows[name].append((user, " ".join(history[-max_len:]), item))
            history.append(item)
    header = [f"{USER}:token", f"{ITEMS}:token_seq", f"{ITEM}:token"]
    return {name: pd.DataFrame(r, columns=header) for name, r in rows.items()}


def known_matrix(dataset: Any, events: pd.DataFrame) -> torch.Tensor:
    """[users, items] bool: True where the user has an event in `events` (RecBole's ids)."""
    known = torch.zeros(dataset.user_num, dataset.item_num, dtype=torch.bool)
    users = dataset.token2id(USER, events[USER].to_numpy())
    items = dataset.token2id(ITEM, events[ITEM].to_numpy())
    known[torch.as_tensor(users), torch.as_tensor(items)] = True
    return known


def run_seed(seed: int, parts: dict[str, pd.DataFrame], root: Path,
             config_dict: dict[str, Any]) -> dict[str, Any]:
    """Trains SASRec with `seed` on root/ml/; test metrics with known items masked, and unmasked
    (RecBole's own full-sort protocol for sequential models)."""
    config = Config(model=SASRec, dataset="ml", config_dict={
        **config_dict, "seed": seed, "data_path": str(root),
        "checkpoint_dir": str(root / f"saved-{seed}")})
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = SASRec(config, train_data.dataset).to(config["device"])
    trainer = MaskedTrainer(config, model)
    started = time.perf_counter()
    trainer.known = known_matrix(dataset, parts["train"])
    _, valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    trainer.known = known_matrix(dataset, pd.concat([parts["train"], parts["valid"]]))
    test = trainer.evaluate(test_data, load_best_model=True)
    seconds = time.perf_counter() - started
    trainer.known = None
    unmasked = trainer.evaluate(test_data, load_best_model=False)
    return {
        "seed": seed, **{k: float(test[k]) for k in REPORTED},
        "best_epoch": trainer.best_epoch, "epochs_run": len(trainer.train_loss_dict),
        "seconds": round(seconds, 1), "valid_ndcg@10": float(valid["ndcg@10"]),
        "test_all": {k: float(v) for k, v in test.items()},
        "test_unmasked": {k: float(v) for k, v in unmasked.items()},
    }


def summary(values: list[float]) -> dict[str, float | None]:
    """Mean and 95% t-interval half-width (None with one value)."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return {"mean": mean, "ci95": None}
    sem = float(np.std(values, ddof=1)) / np.sqrt(len(values))
    return {"mean": mean, "ci95": float(stats.t.ppf(0.975, len(values) - 1) * sem)}


def markdown(results: dict[str, Any]) -> str:
    def cell(s: dict[str, float | None]) -> str:
        return f"{s['mean']:.4f}" + (f" ± {s['ci95']:.4f}" if s["ci95"] is not None else "")

    lines = ["# SASRec anchor (RecBole 1.2.1) on the project's leave-last-out split", "",
             ("Full-catalogue ranking, the user's train + validation items excluded; "
              f"seeds {', '.join(str(r['seed']) for r in results['seeds'])}; "
              "mean ± 95% t-interval."), "",
             "| | " + " | ".join(REPORTED) + " | best epoch | seconds |",
             "|---|" + "---:|" * (len(REPORTED) + 2)]
    for r in results["seeds"]:
        lines.append(f"| seed {r['seed']} | " + " | ".join(f"{r[k]:.4f}" for k in REPORTED)
                     + f" | {r['best_epoch']} | {r['seconds']:.0f} |")
    lines.append("| **mean** | " + " | ".join(cell(results["summary"][k]) for k in REPORTED)
                 + " | | |")
    return "\n".join(lines) + "\n"


def write_results(out: Path, runs: list[dict[str, Any]], config: dict[str, Any],
                  split: dict[str, Any] | None) -> None:
    """results.json (per seed, mean ± 95% t-interval, config, versions) and results.md."""
    results = {
        "model": "SASRec", "protocol": "leave-last-out, full catalogue, known items excluded",
        "seeds": runs, "summary": {k: summary([r[k] for r in runs]) for k in REPORTED},
        "config": config, "split": split,
        "versions": {"recbole": recbole.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", required=True, type=Path, help="export_split's directory")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", required=True, type=Path, help="results.json to write")
    parser.add_argument("--epochs", type=int, default=CONFIG["epochs"])
    args = parser.parse_args()
    out = args.out.resolve()
    torch.set_num_threads(1)
    config_dict = {**CONFIG, "epochs": args.epochs}
    parts = read_events(args.split)
    split_info = args.split / "split.json"
    split = json.loads(split_info.read_text()) if split_info.is_file() else None
    runs: list[dict[str, Any]] = []
    # RecBole writes log/ and log_tensorboard/ under the working directory: a temporary one.
    with tempfile.TemporaryDirectory(prefix="recbole-sasrec-") as tmp, contextlib.chdir(tmp):
        (Path(tmp) / "ml").mkdir()
        for name, rows in sequence_rows(parts, CONFIG["MAX_ITEM_LIST_LENGTH"]).items():
            rows.to_csv(Path(tmp) / "ml" / f"ml.{name}.inter", sep="\t", index=False)
        for seed in args.seeds:
            runs.append(run_seed(seed, parts, Path(tmp), config_dict))
            print(json.dumps(runs[-1]), flush=True)
            write_results(out, runs, config_dict, split)  # after each seed: runs are long


if __name__ == "__main__":
    main()
