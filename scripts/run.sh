#!/usr/bin/env bash
# The main command: install, train + register the default models when no champion is registered,
# export champion (and challenger) into the BentoML model store (what `bentoml build` pins), then
# serve on port ${PORT:-3000}, following the registry's aliases live (scripts/serve.py).
#   RECSYS_DATA_PATH=../shared/data/ml-100k bash scripts/run.sh   # MovieLens instead of synthetic
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
echo "==> a champion trained on this data (kept, promoted again, or trained now)"
.venv/bin/python -m training run --ensure-champion
echo "==> exporting the registered models into the BentoML store"
.venv/bin/python -m registry export --alias champion --alias challenger \
  --models-file "${RECSYS_MODELS_FILE:-serving-models.json}"
echo "==> serving on http://127.0.0.1:${PORT:-3000}"
exec .venv/bin/python scripts/serve.py
