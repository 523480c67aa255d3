#!/usr/bin/env bash
# Data at scale on H200s (the second and third re-prepare site_docs, ~1 min, on a fresh machine):
#   bash scripts/gpu_data.sh OUT loader  site_docs shards (token counts, MB/s) and the loader's share of step
#                                        time for llama_130m at batch 16 × 1024 tokens, ~2 min
#   bash scripts/gpu_data.sh OUT 1       the same, then scale=gpu_small table_spike (seed 0: GlobalGC, AdaGC)
#   bash scripts/gpu_data.sh OUT 2       scale=gpu_small table_locality (seed 0: 4 clippers, run side by side,
#                                        spread over the GPUs in $GPUS (default: all): a 134M model at 8 × 256
#                                        tokens leaves a GPU mostly idle)
# Writes small files into OUT: prepare_site_docs.json, loader.json, site_docs_tokens.txt, train.log,
# table_spike.md, table_locality.md, val_curves_<experiment>.json (validation perplexity over training).
set -uo pipefail
out=${1:?usage: gpu_data.sh OUT loader|1|2}
stage=${2:?usage: gpu_data.sh OUT loader|1|2}
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"

if [ "$stage" != 2 ]; then
  $cli data prepare data=site_docs --out "$out/prepare_site_docs.json" 2>&1 | tail -n 2
  PYTHONPATH=${PYTHONPATH:-$PWD} python3 scripts/bench_loader.py --out "$out/loader.json" model=llama_130m train.batch_size=16 \
    train.seq_len=1024 data=site_docs train.device=cuda 2>&1 | tail -n 1
  python3 - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
prepared, loader = json.loads((out / "prepare_site_docs.json").read_text()), json.loads((out / "loader.json").read_text())
lines = [f"site_docs fingerprint {prepared['fingerprint']}: {prepared['documents']['train']:,} training documents, "
         f"{prepared['tokens']['train']:,} training tokens (target >= 10,000,000: "
         f"{'met' if prepared['tokens']['train'] >= 10_000_000 else 'NOT met'}), {prepared['tokens']['val']:,} validation "
         f"tokens, {prepared['text_bytes'] / 1e6:.1f} MB of text prepared at {prepared['mb_per_s']:.2f} MB/s",
         f"loader share of step time (llama_130m, 16 x 1024): {loader['loader_share_percent']:.3f}% "
         f"(target < 1%: {'met' if loader['loader_share_percent'] < 1 else 'NOT met'}), "
         f"step {loader['mean_step_ms']:.1f} ms, loader wait {loader['mean_loader_wait_ms']:.3f} ms"]
(out / "site_docs_tokens.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
fi

[ "$stage" = loader ] && exit
experiment=$([ "$stage" = 1 ] && echo table_spike || echo table_locality)
results="$out/results"
common=(experiment=$experiment scale=gpu_small seed=0 train.progress=false paths.results="$results"
        paths.checkpoints=/tmp/adagc-ckpt)
if [ "$stage" = 1 ]; then
  $cli run -m "${common[@]}" >> "$out/train.log" 2>&1
else
  $cli data prepare "${common[@]}" > /dev/null 2>&1  # once, before the runs that read it start together
  read -ra gpus <<< "${GPUS:-$(seq -s ' ' 0 $(($(nvidia-smi -L | wc -l) - 1)))}"; i=0  # GPUS="1": only GPU 1
  for clip in global local adagc_global adagc; do
    CUDA_VISIBLE_DEVICES=${gpus[$((i % ${#gpus[@]}))]} $cli run "${common[@]}" clip=$clip > "$out/train-$clip.log" 2>&1 &
    i=$((i + 1))
  done
  wait
  tail -q -n 3 "$out"/train-*.log >> "$out/train.log"
fi
$cli tables experiment=$experiment --results "$results" > "$out/$experiment.md"
tail -n 12 "$out/train.log"
python3 - "$results" "$out/val_curves_$experiment.json" <<'PY'
import json, pathlib, sys
curves = {}
for run in sorted(pathlib.Path(sys.argv[1]).glob("runs/*")):
    if not (run / "summary.json").exists():
        print(run.name, "has no summary:", (run / "error.txt").read_text()[-300:] if (run / "error.txt").exists() else "")
        continue
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ppl = [(row["step"], row["val/ppl"]) for row in rows if row.get("val/ppl") is not None]
    rises = any(later > earlier for (_, earlier), (_, later) in zip(ppl, ppl[1:]))
    curves[run.name] = {"experiment": summary["experiment"], "clip": summary["clip"], "val_ppl": ppl,
                        "val_ppl_rises": rises, "data_epochs": summary.get("data_epochs"),
                        "data_train_tokens": summary.get("data_train_tokens"), "final_train_loss": summary["final_train_loss"]}
    print(f"{summary['experiment'] or '-':15s} {summary['clip']:13s} epochs {summary.get('data_epochs') or 0:.3f} val ppl",
          " -> ".join(f"{p:.1f}" for _, p in ppl), "RISES" if rises else "never rises")
pathlib.Path(sys.argv[2]).write_text(json.dumps(curves, indent=1) + "\n")
PY
