#!/usr/bin/env bash
# Same-protocol SASRec anchor: RecBole 1.2.1's SASRec trained and scored on the project's
# leave-last-out split (benchmarks/anchors/). RecBole lives in its own venv, .venv-recbole.
#   bash scripts/anchor_sasrec.sh DATA_PATH [OUT_DIR]     # OUT_DIR defaults to reports/anchors
# SEEDS (default "0 1 2 3 4") and EPOCHS (default 200, the cap for early stopping) override.
set -euo pipefail
data=$(realpath "${1:?usage: bash scripts/anchor_sasrec.sh DATA_PATH [OUT_DIR]}")
out=$(realpath -m "${2:-$(dirname "$0")/../reports/anchors}")
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
requirements=(recbole==1.2.1 'numpy==1.26.*' 'pandas==2.1.*' 'scipy==1.12.*' torch==2.13.0)
stamp=.venv-recbole/.anchor-installed
if [ "$(cat "$stamp" 2>/dev/null)" != "${requirements[*]}" ]; then
  echo "==> installing RecBole into .venv-recbole"
  [ -x .venv-recbole/bin/python ] || python3 -m venv .venv-recbole
  .venv-recbole/bin/python -m pip install --quiet "${requirements[@]}"
  echo "${requirements[*]}" > "$stamp"
fi
[ -x .venv/bin/python ] || source scripts/bootstrap.sh
echo "==> exporting the split of $data"
.venv/bin/python -m benchmarks.anchors.export_split --data "$data" --out "$out/split"
echo "==> training SASRec (RecBole), seeds ${SEEDS:-0 1 2 3 4}"
# shellcheck disable=SC2086  # one seed a word
.venv-recbole/bin/python benchmarks/anchors/recbole_sasrec.py --split "$out/split" \
  --seeds ${SEEDS:-0 1 2 3 4} --epochs "${EPOCHS:-200}" --out "$out/results.json"
echo "==> $out/results.json, $out/results.md"
