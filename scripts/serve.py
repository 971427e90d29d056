"""Serve the recommender the way the main command does, stopping what it started on exit.

- Redis: a local redis-server when RECSYS_REDIS_URL is unset, with an append-only file in
  .run/redis (appendfsync everysec): events it acknowledged survive its restart, and the main
  command's next start.
- Models: by default the service follows the MLflow registry's aliases live
  (RECSYS_MODEL_SOURCE=registry): a promotion or rollback reaches it without a restart. The
  registry is read through a tracking server: RECSYS_REGISTRY_URI, else an `mlflow server`
  started here over the project's store (RECSYS_TRACKING_URI, else mlstore/mlruns.db).
  RECSYS_MODEL_SOURCE=pinned serves the models file's pinned tags instead, as a built Bento does.
- Admin token: the admin endpoints (canary, rollback) need RECSYS_ADMIN_TOKEN; when it is unset,
  a random one is made and kept in .run/admin-token (readable by this user only), where the CLI
  and the notebooks find it (RECSYS_ADMIN_TOKEN_FILE).
"""
from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

from devtools.local_redis import LocalRedis
from devtools.processes import KEEP_ALIVE_S, ServerProcess

ROOT = Path(__file__).resolve().parent.parent


def tracking_server(store_uri: str, directory: Path) -> ServerProcess:
    """`mlflow server` on 127.0.0.1 over the store training writes to (artifacts of runs logged
    through it go to directory/mlartifacts-served)."""
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri,
               "--host", "127.0.0.1", "--port", "{port}", "--workers", "1", "--serve-artifacts",
               "--artifacts-destination", str(directory / "mlartifacts-served")]
    return ServerProcess("mlflow server", command, {}, directory / "mlflow-server.log",
                         ready_path="/health", ready_timeout_s=120)


def store_uri() -> str:
    configured = os.environ.get("RECSYS_TRACKING_URI")
    if configured:
        return configured
    store = Path(os.environ.get("RECSYS_STORE_DIR", ROOT / "mlstore"))
    return f"sqlite:///{(store / 'mlruns.db').resolve()}"


def admin_token(run_dir: Path) -> str:
    """A token kept across restarts in run_dir/admin-token (mode 600), made on first use."""
    path = run_dir / "admin-token"
    if not path.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32))
    return path.read_text().strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    parser.add_argument("--run-dir", type=Path, default=ROOT / ".run",
                        help="logs and data of the servers started here")
    args = parser.parse_args()
    env = dict(os.environ)
    env.setdefault("RECSYS_MODEL_SOURCE", "registry")
    command = [sys.executable, "-m", "bentoml", "serve", "service:Recommender",
               "--port", str(args.port), "--timeout-keep-alive", str(KEEP_ALIVE_S)]
    if not env.get("RECSYS_ADMIN_TOKEN"):
        env["RECSYS_ADMIN_TOKEN"] = admin_token(args.run_dir)
        print(f"==> admin endpoints: the token is in {args.run_dir / 'admin-token'} (python -m "
              "registry canary ... and notebooks/06_canary.ipynb read it there)", flush=True)
    with ExitStack() as started:
        if not env.get("RECSYS_REDIS_URL"):
            redis = started.enter_context(LocalRedis(args.run_dir / "redis", durable=True))
            env["RECSYS_REDIS_URL"] = redis.url
            print(f"==> started a local Redis at {redis.url} (set RECSYS_REDIS_URL to use your "
                  "own)", flush=True)
        if env["RECSYS_MODEL_SOURCE"] == "registry" and not env.get("RECSYS_REGISTRY_URI"):
            uri = store_uri()
            if uri.startswith(("http://", "https://")):
                env["RECSYS_REGISTRY_URI"] = uri
            else:
                server = started.enter_context(tracking_server(uri, args.run_dir))
                env["RECSYS_REGISTRY_URI"] = server.url
                print(f"==> started an MLflow tracking server at {server.url} over {uri}: the "
                      "service follows its aliases (set RECSYS_REGISTRY_URI to use your own)",
                      flush=True)
        service = subprocess.Popen(command, cwd=ROOT, env=env)
        # SIGTERM (kill, a container stop) stops the service first, then what was started here.
        signal.signal(signal.SIGTERM, lambda signum, frame: service.terminate())
        try:
            return service.wait()
        except KeyboardInterrupt:  # Ctrl+C reached the service too: let it finish stopping
            return service.wait()


if __name__ == "__main__":
    sys.exit(main())
