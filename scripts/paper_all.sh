#!/usr/bin/env bash
# Regenerate every table of the AdaGC paper (and ZClip's LR sweep): train, evaluate, tabulate, report.
#
#   scripts/paper_all.sh                      # paper scale (a GPU cluster: 7B models, 9K-36K steps)
#   SCALE=gpu_small scripts/paper_all.sh      # one H200, minutes per run
#   SCALE=cpu_tiny scripts/paper_all.sh       # a laptop CPU, tens of seconds per run
#   scripts/paper_all.sh hydra/launcher=...   # extra overrides go to every `run` (e.g. a Slurm launcher)
#
# Runs are content-addressed: re-running the script skips finished runs and resumes interrupted ones.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE="${SCALE:-paper}"
RESULTS="${RESULTS:-results}"
run() { adagc-repro run -m "experiment=$1" "scale=$SCALE" "paths.results=$RESULTS" "${@:2}"; }

# Spike-score table (its runs also make the Llama-2 7B, Qwen3 and Mixtral rows of the accuracy table)
run table_spike "$@"
run table_spike_qwen3 "$@"
run table_spike_mixtral "$@"
# Main accuracy table: the SPAM baseline (GlobalGC/AdaGC rows come from the spike-table runs)
run table_accuracy "$@"
# Optimizer compatibility: {AdamW, Lion, Muon} x {GlobalGC, AdaGC}
run table_optimizers "$@"
run table_optimizers_lion "$@"
run table_optimizers_muon "$@"
# AdaGC lambda_rel x beta grid, with its GlobalGC reference
run table_grid "$@"
run table_grid_baseline "$@"
# Locality x adaptivity ablation: GlobalGC, LocalGC, AdaGC-global, AdaGC
run table_locality "$@"
# ZClip's LR sweep: fixed threshold vs ZClip (z_thres 2.0 at the two highest LRs as in the paper)
run table_zclip_lr "$@"
run table_zclip_lr_z2 "$@"
# Spike lab: every deterministic fault trigger × GlobalGC, AdaGC, ZClip (README "Spike lab")
run spike_lab "$@"

# The experiments evaluate at the end of training; evaluate finished runs that still lack eval.json
# (e.g. lm-eval data was not cached where they trained). Small scales train without evaluation.
if [[ "$SCALE" == paper ]]; then
  missing=()
  for run_dir in "$RESULTS"/runs/*/; do
    if [[ -f "$run_dir/DONE" && ! -f "$run_dir/eval.json" ]]; then missing+=("$(basename "$run_dir")"); fi
  done
  if (( ${#missing[@]} )); then adagc-repro eval "${missing[@]}" eval=lm_eval_core --results "$RESULTS"; fi
fi

adagc-repro tables --format md,csv --out "$RESULTS/tables" --results "$RESULTS"   # every setting: mean ± std over its seeds
adagc-repro tables experiment=all --format md,csv,tex,html --out "$RESULTS/tables" --results "$RESULTS"
adagc-repro report all --out "$RESULTS/reports/all" --results "$RESULTS"
