#!/usr/bin/env bash
# Distributed training on a machine with two GPUs (H200s), in parts that each fit one <= 9-minute command:
#   scripts/gpu_distributed.sh OUT tests     # GPU-marked distributed tests (NCCL), ~3 min
#   scripts/gpu_distributed.sh OUT scaling-1gpu  # llama_1b on one GPU (CUDA_VISIBLE_DEVICES picks it), 16 x 1024
#   scripts/gpu_distributed.sh OUT scaling-2gpu  # llama_1b on both GPUs (DDP): 16 sequences per GPU (weak
#                                                # scaling) and the same global 16 (strong); ratios to the 1-GPU run
#   scripts/gpu_distributed.sh OUT 7b        # llama2_7b, AdaGC, FSDP2 on 2 GPUs, seq 4096, full activation
#                                            # checkpointing: SIGKILL of rank 1 after the step-10 checkpoint,
#                                            # then the same command resumes to DONE at step 20, ~8 min
# Logs and JSON go into OUT (small files only); checkpoints go to $CKPT (default /tmp/adagc-ckpt): a 7B
# checkpoint with fp32 AdamW state is ~80 GB, so the 7B run keeps one (train.keep_checkpoints=1).
set -uo pipefail
out=${1:?usage: $0 OUT tests|scaling-1gpu|scaling-2gpu|7b}
part=${2:-tests}
mkdir -p "$out"
out=$(cd "$out" && pwd)
source "$(dirname "$0")/gpu_env.sh"
ckpt=${CKPT:-/tmp/adagc-ckpt}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version(), 'transformers', transformers.__version__)"
  df -h "$(dirname "$ckpt")" | tail -1; date -u; } > "$out/env-$part.txt" 2>&1
cat "$out/env-$part.txt"

summarize() {  # summarize RESULTS LABEL: steady-state (steps > 5) medians and the run's facts, one line
  python3 - "$1" "$2" <<'PY' | tee -a "$out/summary.txt"
import json, pathlib, statistics, sys
for run in sorted(pathlib.Path(sys.argv[1]).glob("runs/*")):
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    steady = [r for r in rows if r["step"] > 5] or rows
    s = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    status = "DONE" if (run / "DONE").exists() else "FAILED" if (run / "FAILED").exists() else "partial"
    line = {"label": sys.argv[2], "run": run.name, "status": status, "steps": len(rows),
            "world_size": s.get("world_size"), "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
            "mfu_pct": statistics.median(r["mfu"] for r in steady) if steady and steady[0].get("mfu") else None,
            "peak_memory_gib_per_gpu": s.get("peak_memory_gib"), "final_loss": rows[-1]["loss"] if rows else None,
            "clip_collectives": steady[-1].get("clip/collectives"), "clip_comm_bytes": steady[-1].get("clip/comm_bytes")}
    print(json.dumps(line))
PY
}

case "$part" in
tests)
  python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_distributed_gpu.py 2>&1 | tail -n 30 | tee "$out/gpu_distributed_tests.log"
  ;;
scaling-1gpu|scaling-2gpu)
  # 30 steps, no validation or checkpoints: only the final model, in bf16, is written
  common=(model=llama_1b clip=adagc train.seq_len=1024 train.steps=30 train.val_every=0 train.val_batches=1
          train.checkpoint_every=0 train.final_checkpoint=false train.export_dtype=bfloat16 train.progress=false
          paths.checkpoints="$ckpt/scaling")
  if [ "$part" = scaling-1gpu ]; then
    $cli run "${common[@]}" train.batch_size=16 paths.results="$out/scaling-1gpu" 2>&1 | tail -n 5 | tee "$out/scaling-1gpu.log"
    summarize "$out/scaling-1gpu" llama_1b-1gpu
    exit
  fi
  ddp=(parallel=ddp parallel.nproc_per_node=2)
  for batch_label in 32:16-per-gpu 16:8-per-gpu; do  # weak scaling first, then strong
    batch=${batch_label%%:*} label=llama_1b-2gpu-ddp-${batch_label#*:}
    $cli run "${common[@]}" "${ddp[@]}" train.batch_size=$batch paths.results="$out/$label" 2>&1 | tail -n 5 | tee "$out/$label.log"
    summarize "$out/$label" "$label"
    python3 - "$out/summary.txt" "$label" <<'PY' | tee -a "$out/summary.txt"
import json, sys
rows = {r["label"]: r for r in map(json.loads, open(sys.argv[1])) if "tokens_per_s" in r}
ratio = rows[sys.argv[2]]["tokens_per_s"] / rows["llama_1b-1gpu"]["tokens_per_s"]
print(json.dumps({"label": f"{sys.argv[2]} / llama_1b-1gpu", "tokens_per_s_ratio": ratio}))
PY
  done
  ;;
7b)
  rm -rf "$ckpt/7b"
  command=($cli run model=llama2_7b clip=adagc parallel=fsdp2 parallel.nproc_per_node=2 train.steps=20
           train.seq_len=4096 train.batch_size=2 train.activation_checkpointing=full train.checkpoint_every=10
           train.keep_checkpoints=1 train.final_checkpoint=false train.export_dtype=bfloat16 train.log_every=1
           train.val_every=0 train.val_batches=1 train.progress=false
           paths.results="$out/7b" paths.checkpoints="$ckpt/7b")
  echo "$(date -u +%T) first command starts" | tee "$out/7b-kill.txt"
  "${command[@]}" > "$out/7b-first.log" 2>&1 &
  first=$!
  # Wait for the run folder's record of the step-10 checkpoint, then SIGKILL rank 1.
  until ls "$out"/7b/runs/*/checkpoint.json > /dev/null 2>&1 || ! kill -0 $first 2> /dev/null; do sleep 2; done
  rank1=$(python3 - <<'PY'
import os
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        env = b"\0" + open(f"/proc/{pid}/environ", "rb").read()
    except OSError:
        continue
    if b"adagc_repro.worker" in cmd and b"\0RANK=1\0" in env:
        print(pid)
PY
)
  echo "$(date -u +%T) killing rank 1 (pid ${rank1:-none}) after: $(cat "$out"/7b/runs/*/checkpoint.json | tr -d '\n ')" | tee -a "$out/7b-kill.txt"
  [ -n "$rank1" ] && kill -9 $rank1
  wait $first; rc=$?; echo "$(date -u +%T) first command exit: $rc" | tee -a "$out/7b-kill.txt"
  tail -n 5 "$out/7b-first.log"
  "${command[@]}" > "$out/7b-resume.log" 2>&1; rc=$?; echo "$(date -u +%T) resumed command exit: $rc" | tee -a "$out/7b-kill.txt"
  grep -h "resuming from step\|checkpoint" "$out/7b-resume.log" | head -n 5 | tee -a "$out/7b-kill.txt"
  tail -n 8 "$out/7b-resume.log"
  summarize "$out/7b" llama2_7b-fsdp2-2gpu
  ;;
*) echo "unknown part '$part' (tests | scaling-1gpu | scaling-2gpu | 7b)"; exit 2 ;;
esac
