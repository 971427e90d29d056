"""The user tower's cost per request: one user at a time through ONNX Runtime on one thread, as
the inline serving path calls it, for each embedding bundle given, side by side in one run.

    python -m benchmarks.user_tower --bundle reports/seeds/seed-0/work/embedding-sequence \
        --bundle reports/seeds/seed-0/work/embedding-pooled --out reports/user_tower

Histories are the bundle's own served users' (its training snapshot), each at the bundle's
history length; bundles are measured in alternating rounds so that machine noise falls on all
of them alike. Writes OUT/user_tower.json and OUT/user_tower.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from recsys.models.bundles import EmbeddingBundle


def measure(bundles: dict[str, EmbeddingBundle], calls: int, rounds: int) -> dict[str, Any]:
    """p50/p99/mean microseconds per one-user call, each bundle `calls` calls per round."""
    timings: dict[str, list[float]] = {name: [] for name in bundles}
    inputs = {}
    for name, bundle in bundles.items():
        users = bundle.users
        if users is None or not len(users.user_ids):
            raise ValueError(f"{bundle.path}: the bundle has no served users to take histories from")
        inputs[name] = (users.histories, users.attributes)
        for i in range(50):  # warm up: the first calls allocate
            bundle.encode_users(users.histories[i % len(users.histories)][None],
                                users.attributes[i % len(users.histories)][None])
    for _ in range(rounds):
        for name, bundle in bundles.items():
            histories, attributes = inputs[name]
            for i in range(calls):
                row = i % len(histories)
                start = time.perf_counter()
                bundle.encode_users(histories[row][None], attributes[row][None])
                timings[name].append((time.perf_counter() - start) * 1e6)
    return {name: {"history_len": bundles[name].history_len,
                   "user_encoder": bundles[name].config.get("user_encoder", "pooled"),
                   "calls": len(t), "p50_us": float(np.percentile(t, 50)),
                   "p99_us": float(np.percentile(t, 99)), "mean_us": float(np.mean(t))}
            for name, t in timings.items()}


def markdown(results: dict[str, Any]) -> str:
    lines = ["| bundle | encoder | history | p50 µs | p99 µs | mean µs |", "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {r['user_encoder']} | {r['history_len']} | {r['p50_us']:.0f} | "
              f"{r['p99_us']:.0f} | {r['mean_us']:.0f} |" for name, r in results.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, action="append", required=True)
    parser.add_argument("--calls", type=int, default=2000, help="calls per bundle per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("reports/user_tower"))
    args = parser.parse_args()
    bundles = {path.name: EmbeddingBundle.load(path, threads=1) for path in args.bundle}
    results = measure(bundles, args.calls, args.rounds)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"results": results, "machine": platform.platform(), "threads": 1,
               "calls_per_round": args.calls, "rounds": args.rounds}
    (args.out / "user_tower.json").write_text(json.dumps(payload, indent=2))
    (args.out / "user_tower.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
