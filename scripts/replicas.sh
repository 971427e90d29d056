#!/usr/bin/env bash
# N replicas of the service behind HAProxy, sharing one Redis (devtools/replicas.py):
#   bash scripts/replicas.sh --replicas 3 --port 8080
# Installs what it needs (.venv; Debian's haproxy, as root, when none is found), makes sure a
# champion is trained and exported as scripts/run.sh does, then serves the models file's pinned
# tags (what a built Bento serves) from every replica. To follow the registry's aliases instead:
#   RECSYS_MODEL_SOURCE=registry RECSYS_REGISTRY_URI=http://<mlflow server> bash scripts/replicas.sh
# RECSYS_REDIS_URL: the shared Redis (default: one started here). Ctrl+C or SIGTERM stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
if [ "${RECSYS_MODEL_SOURCE:-pinned}" = pinned ]; then
  echo "==> a champion trained on this data (kept, promoted again, or trained now)"
  .venv/bin/python -m training run --ensure-champion
  echo "==> exporting the registered models into the BentoML store"
  .venv/bin/python -m registry export --alias champion --alias challenger \
    --models-file "${RECSYS_MODELS_FILE:-serving-models.json}"
fi
exec .venv/bin/python -m devtools.replicas "$@"
