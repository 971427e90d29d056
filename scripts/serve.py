"""Serve the exported champion: start a local Redis when RECSYS_REDIS_URL is unset, then
`bentoml serve service:Recommender`, and stop that Redis again when the server exits."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from devtools.local_redis import LocalRedis

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    parser.add_argument("--redis-dir", type=Path, default=ROOT / ".redis")
    args = parser.parse_args()
    command = [sys.executable, "-m", "bentoml", "serve", "service:Recommender",
               "--port", str(args.port)]
    if os.environ.get("RECSYS_REDIS_URL"):
        return subprocess.call(command, cwd=ROOT)
    args.redis_dir.mkdir(parents=True, exist_ok=True)
    with LocalRedis(args.redis_dir) as redis:
        print(f"==> started a local Redis at {redis.url} (set RECSYS_REDIS_URL to use your own)",
              flush=True)
        try:
            return subprocess.call(command, cwd=ROOT, env={**os.environ, "RECSYS_REDIS_URL": redis.url})
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
