#!/usr/bin/env bash
# The test command: installs what it needs, then runs the whole suite (extra args go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
export TQDM_DISABLE=1
exec .venv/bin/python -m pytest "$@"
