#!/usr/bin/env bash
# Creates .venv and installs the project with what both commands need. Idempotent: a stamp of
# pyproject.toml skips the install when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
# RECSYS_ACCELERATOR=gpu installs onnxruntime-gpu and faiss-gpu (the `gpu` extra) instead of
# the CPU builds; the other pair is removed first, since both install the same modules.
accelerator=${RECSYS_ACCELERATOR:-cpu}
case "$accelerator" in
  cpu) other="onnxruntime-gpu faiss-gpu faiss-gpu-cu12" ;;
  gpu) other="onnxruntime faiss-cpu" ;;
  *) echo "RECSYS_ACCELERATOR must be cpu or gpu, got '$accelerator'" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.recsys-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $accelerator"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "==> installing (torch CPU wheel first, then the project with its extras, $accelerator)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch==2.13.0 resolves to the CPU wheel on these machines; an unpinned torch pulls CUDA.
  .venv/bin/python -m pip install --quiet torch==2.13.0
  # shellcheck disable=SC2086  # one package name per word
  .venv/bin/python -m pip uninstall --quiet --yes $other 2>/dev/null || true
  .venv/bin/python -m pip install --quiet -e ".[serving,training,dev,ray,$accelerator]"
  echo "$want" > "$stamp"
fi
# promtool checks the Prometheus rules in deploy/monitoring/ (tests/deploy/test_monitoring.py).
if [ ! -x .venv/bin/promtool ] && ! command -v promtool >/dev/null; then
  echo "==> unpacking promtool from Debian's prometheus package into .venv/bin"
  bash scripts/install_promtool.sh .venv/bin || echo "==> no promtool: the rules' checks will skip" >&2
fi
export BENTOML_DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
