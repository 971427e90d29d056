#!/usr/bin/env bash
# Creates .venv and installs the project with what both commands need. Idempotent: a stamp of
# pyproject.toml skips the install when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.recsys-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "==> installing (torch CPU wheel first, then the project with its extras)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch==2.13.0 resolves to the CPU wheel on these machines; an unpinned torch pulls CUDA.
  .venv/bin/python -m pip install --quiet torch==2.13.0
  .venv/bin/python -m pip install --quiet -e ".[serving,training,dev]"
  echo "$want" > "$stamp"
fi
export BENTOML_DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
