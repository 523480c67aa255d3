#!/usr/bin/env bash
# A paper experiment end to end on one GPU at `gpu_small` scale: train, tabulate, report.
#   OUT=<folder> scripts/gpu_experiment.sh [EXPERIMENT=table_spike] [extra overrides...]
set -uo pipefail
out=${OUT:-gpu-experiment}
experiment=${1:-table_spike}
shift || true
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"
results="$out/results"
$cli run -m experiment="$experiment" scale=gpu_small train.progress=false paths.results="$results" \
  paths.checkpoints=/tmp/adagc-ckpt "$@" 2>&1 | tail -n 12
$cli tables experiment="$experiment" --results "$results" > "$out/$experiment.md"
$cli report "$experiment" --results "$results" --out "$out/report" | tail -n 2
python3 - "$results" "$out/summaries.json" <<'PY'
import json, pathlib, sys
rows = [json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob("runs/*/summary.json"))]
pathlib.Path(sys.argv[2]).write_text(json.dumps(rows, indent=1))
for s in rows:
    print(s["clip"], s["seed"], "final", round(s["final_train_loss"], 4), "val_ppl", round(s["val_ppl"], 2),
          "tok/s", round(s["tokens_per_s"]), "mfu%", s["mfu"] and round(s["mfu"], 1), "wall", round(s["wall_s"]))
PY
