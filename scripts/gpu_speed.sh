#!/usr/bin/env bash
# Speed on one GPU, in four parts of under 9 minutes each (run all for the full table):
#   scripts/gpu_speed.sh OUT tests   GPU speed and compiled-loss tests (about 2 minutes), then `bench clip` at 134m
#   scripts/gpu_speed.sh OUT clip    `bench clip` (eager and compiled) at 1.35b and 7b-shaped
#   scripts/gpu_speed.sh OUT step    `bench step` (the project's loop, the plain compiled loop and the plain loop
#                                    with the project's attention) at llama_130m and llama_1b, 16x1024 tokens,
#                                    AdaGC (the first one also builds the data cache), with each loop's steps
#                                    30-32 profiled into OUT/profile_<model>_<loop>_*
#   scripts/gpu_speed.sh OUT fold    GPU tests of clipping folded into AdamW, then `bench clip --optimizer adamw`
#                                    (AdamW alone, clip_grad_norm_ + AdamW, AdaGC compiled + AdamW, AdaGC folded)
#                                    at 134m, 1.35b and 7b-shaped
# MODELS="llama_130m" limits the step part to those models (one model per call keeps a call under 7 minutes).
# Each piece writes JSON into OUT under its own time limit, so a slow piece leaves the others' results;
# every part ends by (re)writing OUT/speed.md from all the JSON there.
set -uo pipefail
out=${1:?usage: scripts/gpu_speed.sh OUT tests|clip|step|fold}
part=${2:?usage: scripts/gpu_speed.sh OUT tests|clip|step|fold}
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sys, torch, transformers; print('python', sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__)"
  date -u +%Y-%m-%dT%H:%MZ; source_tree; } > "$out/machine.txt"

clip_bench() {  # $1: gradient set, $2: time limit in seconds
  timeout "$2" $cli bench clip --device cuda --sizes "$1" --repeats 20 --impl eager,compiled \
    --out "$out/bench_clip_$1.json" 2>&1 | grep -v Warning | tail -n 30
}
case "$part" in
  tests)
    timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_speed_gpu.py tests/test_compiled_loss.py 2>&1 | tail -n 25 \
      | tee "$out/gpu_speed_tests.log"
    clip_bench 134m 200 ;;  # its 22 rows take about 2 minutes (80 s gave 14)
  clip)  # a compiled row compiles its clipper afresh: at 1.35B, 14 rows took 200 s
    clip_bench 1.35b 260
    clip_bench 7b-shaped 260 ;;
  step)
    for model_limit in llama_130m:260 llama_1b:380; do
      model=${model_limit%:*}
      [[ " ${MODELS:-llama_130m llama_1b} " == *" $model "* ]] || continue
      timeout "${model_limit#*:}" $cli bench step model=$model clip=adagc train.batch_size=16 train.seq_len=1024 \
        train.steps=60 --out "$out/bench_step_$model.json" --profile "$out/profile_$model" 2>&1 | tail -n 10
      for loop in project plain plain_causal; do  # flat names: the device tool leaves folders three deep behind
        for file in operators.txt trace.json.gz; do
          [ -f "$out/profile_$model/$loop/$file" ] && mv "$out/profile_$model/$loop/$file" "$out/profile_${model}_${loop}_$file"
        done
      done
      rm -rf "$out/profile_$model"
    done ;;
  fold)
    timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_speed_gpu.py -k "folded or (matches_eager and adagc)" \
      2>&1 | tail -n 25 | tee "$out/gpu_fold_tests.log"
    for size_limit in 134m:100 1.35b:130 7b-shaped:180; do
      size=${size_limit%:*}
      timeout "${size_limit#*:}" $cli bench clip --device cuda --sizes "$size" --repeats 20 --impl compiled,folded \
        --clippers adagc --optimizer adamw --out "$out/bench_clip_adamw_$size.json" 2>&1 | grep -v Warning | tail -n 8
    done ;;
  *) echo "unknown part '$part' (tests, clip, step, fold)" >&2; exit 2 ;;
esac

$cli bench summary "$out" --title "Speed on one GPU" --out "$out/speed.md" && cat "$out/speed.md"
