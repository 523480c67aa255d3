#!/usr/bin/env bash
# A paper experiment end to end on one GPU at `gpu_small` scale: train, tabulate, report.
#   OUT=<folder> scripts/gpu_experiment.sh [EXPERIMENT=table_spike] [extra overrides...]
set -uo pipefail
out=${OUT:-gpu-experiment}
experiment=${1:-table_spike}
shift || true
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1
export ADAGC_REPRO_CACHE=${ADAGC_REPRO_CACHE:-/tmp/adagc-cache}
cli="python3 -m adagc_repro.cli"
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
