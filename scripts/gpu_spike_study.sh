#!/usr/bin/env bash
# The project's own GPU study on the visible GPUs (README "Spike lab"); light results are copied into $1.
#
#   PART=a STUDY=minimal scripts/gpu_spike_study.sh OUT   # (a) high-lr study: 12 runs, 430 s on two H200s
#   PART=b STUDY=minimal scripts/gpu_spike_study.sh OUT   # (b) spike lab at gpu_small: 30 runs
#   PART=ab STUDY=full   scripts/gpu_spike_study.sh OUT   # both at full size: 54 + 30 runs
#
# Jobs run side by side in $STREAMS streams (default: two per GPU for part a, three per GPU for part
# b), each stream on one GPU, so that one run compiles or validates while another computes.
#
# (a) GlobalGC, AdaGC, ZClip (+ AGGC, LocalGC, AdaGC-global when full) at peak lr 6e-3 and the stable
#     1e-3 (+ 3e-3 when full), seeds 0,1 (0,1,2 when full), 500 steps (800 when full) of a 110M Llama
#     (llama_130m with vocab 16384), 16 × 1024 tokens per step, compiled; then tables (mean ± std,
#     Welch), curves and an HTML report.
# (b) every trigger of conf/fault × GlobalGC, AdaGC, ZClip × seeds 0,1 at scale=gpu_small, 400 steps with
#     the triggers at step 250 (the scale's 2,000 steps, triggers at 1,200, when full).
#
# DEADLINE=N (seconds) starts no run after N seconds, so that a call with a time limit ends between runs
# rather than in one: with it, EXTRA="train.checkpoint_every=0" saves the periodic checkpoints' time
# (the key does not enter the run id).
# LRS="6e-3 3e-3" runs part (a) at those peak lrs only (a study too long for one call or session runs
# one lr at a time; each lr's methods × seeds then share one tree). REPORT=0 leaves the tables and the
# HTML reports to be made elsewhere from the copied run folders (`adagc-repro tables/report --results`).
# DATA=text_files (default) builds a corpus of the installed packages' docstrings (CORPUS_CHARS, 60M);
# DATA=site_docs uses that data source instead. EXTRA="key=value ..." is appended to every run.
# Runs are content-addressed under $WORK (kept between calls on the same machine): re-running a
# command skips DONE runs and resumes interrupted ones from their last checkpoint, so a call cut by a
# time limit continues where it stopped.
set -uo pipefail
out=${1:?usage: [PART=a|b|ab] [STUDY=minimal|full] [DATA=text_files|site_docs] scripts/gpu_spike_study.sh OUT_DIR}
PART=${PART:-ab}
STUDY=${STUDY:-minimal}
DATA=${DATA:-text_files}
WORK=${WORK:-outputs/gpu_spike_study}
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
mkdir -p "$WORK" "$out" && WORK=$(realpath --relative-to="$PWD" "$WORK")  # no machine paths in configs
export ADAGC_REPRO_CACHE="$PWD/$WORK/cache"  # tokenizer and packed blocks, kept with the runs
mkdir -p "$WORK/logs"
results="$WORK/results"
checkpoints="$WORK/ckpt"
# no final checkpoint: the study needs the metrics and the run folders, not the models
common=(train.progress=false paths.results="$results" paths.checkpoints="$checkpoints" train.keep_checkpoints=1
        train.final_checkpoint=false ${EXTRA:-})
gpus=$(nvidia-smi -L | wc -l)

case "$STUDY" in
  minimal) lrs=(6e-3 1e-3); clips_a=global,adagc,zclip; seeds_a=0,1; steps_a=500
           lab_steps=(train.steps=400 meta.fault_step=250) ;;
  full)    lrs=(6e-3 3e-3 1e-3); clips_a=global,adagc,zclip,aggc,local,adagc_global; seeds_a=0,1,2; steps_a=800
           lab_steps=() ;;
  *) echo "STUDY must be minimal or full" >&2; exit 2 ;;
esac
[[ -n "${LRS:-}" ]] && read -r -a lrs <<< "$LRS"
REPORT=${REPORT:-1}

case "$DATA" in
  text_files) corpus="$WORK/corpus/docstrings.jsonl"
              [[ -s "$corpus" ]] || { mkdir -p "$WORK/corpus"; PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python3 scripts/docstring_corpus.py "$corpus" "${CORPUS_CHARS:-60000000}"; }
              data=(data=text_files "data.paths=[$corpus]" data.vocab_size=16384) ;;
  site_docs)  data=(data=site_docs data.vocab_size=16384) ;;
  *) echo "DATA must be text_files or site_docs" >&2; exit 2 ;;
esac

{ date -u; source_tree; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sys, torch, transformers; print('python', sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__)"
  echo "PART=$PART STUDY=$STUDY DATA=$DATA"; } >> "$out/environment.txt"

job() {  # one run (skipped if DONE), logged; then drop the checkpoints of finished runs (1.7 GB each)
  local name
  name=$(echo "$*" | tr -c 'A-Za-z0-9=.,_-' '_' | cut -c1-150)
  echo "adagc-repro run $* ${common[*]}" >> "$out/commands.txt"
  $cli run "$@" "${common[@]}" > "$WORK/logs/$name.log" 2>&1 < /dev/null
  for done_marker in "$results"/runs/*/DONE; do
    [[ -e "$done_marker" ]] && rm -rf "$checkpoints/$(basename "$(dirname "$done_marker")")"
  done
}

deadline=$(( $(date +%s) + ${DEADLINE:-1000000000} ))
run_all() {  # run_all STREAMS FILE: the jobs of FILE (one line of overrides each) spread over STREAMS
  local streams=$1 jobs=$2 stream   # streams, stream k on GPU k mod the number of GPUs
  for ((stream = 0; stream < streams; stream++)); do
    ( export CUDA_VISIBLE_DEVICES=$((stream % gpus))
      awk -v s=$stream -v n=$streams '(NR - 1) % n == s' "$jobs" | while read -r line; do
        (( $(date +%s) < deadline )) || { echo "DEADLINE: not started: $line" >> "$out/not_started.txt"; continue; }
        job $line
      done ) &
  done
  wait
}

if [[ "$PART" == *a* ]]; then
  model=(model=llama_130m "${data[@]}" train.batch_size=16 train.seq_len=1024 train.steps=$steps_a train.compile=true
         schedule.warmup_steps=100 train.val_every=250 train.checkpoint_every=250
         meta.experiment=spike_lab_lr meta.table=spike_lab)
  # Build the tokenizer, the packed blocks and the compiled graphs once, in a throw-away run.
  $cli run "${model[@]}" train.steps=2 train.val_every=0 clip=global train.progress=false ${EXTRA:-} \
    paths.results="$WORK/warmup" paths.checkpoints=/tmp/adagc-warmup > "$WORK/logs/warmup_a.log" 2>&1
  rm -rf /tmp/adagc-warmup
  for lr in "${lrs[@]}"; do for seed in ${seeds_a//,/ }; do for clip in ${clips_a//,/ }; do
    echo "clip=$clip seed=$seed optim.lr=$lr ${model[*]}"
  done; done; done > "$WORK/jobs_a.txt"
  run_all "${STREAMS:-$((2 * gpus))}" "$WORK/jobs_a.txt"
  if [[ "$REPORT" == 1 ]]; then
    $cli tables experiment=spike_lab_lr --results "$results" --format md,csv,html --out "$out/tables"
    $cli report spike_lab_lr --results "$results" --out "$out/report_lr" | tail -n 2
  fi
fi

if [[ "$PART" == *b* ]]; then
  for clip in global adagc zclip; do for seed in 0 1; do for fault in grad_scale bitflip data_outlier lr_spike lowp_norm; do
    echo "experiment=spike_lab scale=gpu_small clip=$clip fault=$fault seed=$seed ${lab_steps[*]}"
  done; done; done > "$WORK/jobs_b.txt"
  # the tokenizer and packed blocks once, before the streams start side by side
  $cli data prepare experiment=spike_lab scale=gpu_small > "$WORK/logs/prepare_b.log" 2>&1
  run_all "${STREAMS:-$((3 * gpus))}" "$WORK/jobs_b.txt"  # 134M at 8 × 256 tokens is launch-bound
  if [[ "$REPORT" == 1 ]]; then
    $cli tables experiment=spike_lab --results "$results" --format md,csv,html --out "$out/tables"
    $cli report spike_lab --results "$results" --out "$out/report_lab" | tail -n 2
  fi
fi

# Light results only (no checkpoints): run folders, sweep manifests, one JSON of all summaries.
mkdir -p "$out/results"
cp -r "$results/runs" "$results/sweeps" "$out/results/" 2>/dev/null
tail -n 3 "$WORK"/logs/*.log > "$out/logs_tail.txt" 2>&1
python3 - "$results" "$out/summaries.json" <<'PY'
import json, pathlib, sys
rows = [json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob("runs/*/summary.json"))]
pathlib.Path(sys.argv[2]).write_text(json.dumps(rows, indent=1))
for s in sorted(rows, key=lambda s: (s.get("experiment") or "", s["clip"], s["seed"])):
    faults = ",".join(f["name"] for f in s.get("faults") or []) or "-"
    print(f"{s.get('experiment')} {s['clip']:12s} seed {s['seed']} fault {faults:12s} val_ppl {s['val_ppl']:.2f} "
          f"final {s['final_train_loss']:.3f} wall {s['wall_s']:.0f}s")
PY
