#!/usr/bin/env bash
# The main job on the embedded benchmark (called by `make demo`): generate the demo preset, look
# at it, pretrain on the synthetic source, adapt with CC-SSL, WS-CDA and WS-CDA + PPLO, compare
# in MLflow. Its measured time is in the README ("`make demo`" under "Results").
# Re-running continues finished or interrupted runs (--resume auto) instead of starting over.
set -euo pipefail
BIN=${1:-.venv/bin}
DATA=${2:-data/demo}
SEED=${3:-0}
export PATH="$BIN:$PATH"
EXP=toy-demo
RUNS=runs/$EXP
start=$(date +%s)

if [ ! -f "$DATA/manifest.json" ]; then
  da-pose data generate --preset demo --out "$DATA" --seed "$SEED"
fi
mkdir -p "$RUNS"
da-pose data show --data "$DATA#source" --split train --out "$RUNS/source_samples.png" -n 12
da-pose data show --data "$DATA#target" --split train --out "$RUNS/target_samples.png" -n 12

common=(--set "data.root=$DATA" --seed "$SEED" --resume auto)
da-pose pretrain experiments/toy/pretrain_hg.yaml "${common[@]}"
da-pose adapt ccssl experiments/toy/ccssl_hg.yaml "${common[@]}" --set "init=$RUNS/pretrain_hg/last.pt"
da-pose adapt wscda experiments/toy/wscda_hg.yaml "${common[@]}" --set "init=$RUNS/pretrain_hg/last.pt"
da-pose adapt wscda_pplo experiments/toy/wscda_pplo_hg.yaml "${common[@]}" --set "init=$RUNS/pretrain_hg/last.pt"
da-pose compare --experiment "$EXP"
echo
echo "demo finished in $(( $(date +%s) - start )) s. Look further with:"
echo "  $BIN/mlflow ui --backend-store-uri sqlite:///mlruns.db   # then open http://127.0.0.1:5000"
