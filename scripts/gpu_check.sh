#!/usr/bin/env bash
# Everything that needs a GPU, in one go: GPU tests, the clipper benchmark, and a throughput / clipping
# comparison of GlobalGC and AdaGC on a 130M Llama (bf16 autocast, fused AdamW, torch.compile).
# Air-gapped nodes: build .whl first with scripts/wheelhouse.sh; this script installs it if present.
#   OUT=<folder for logs and JSON> scripts/gpu_check.sh
set -uo pipefail
out=${OUT:-gpu-check}
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"

python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -n 30 | tee "$out/gpu_tests.log"

$cli bench clip --device cuda --sizes 134m,1.35b,7b-shaped --repeats 20 --out "$out/bench_clipping.json" 2>&1 | tail -n 40

common=(model=llama_130m train.seq_len=1024 train.batch_size=16 train.steps=${STEPS:-200} train.compile=true
        train.val_every=100 train.checkpoint_every=0 train.progress=false optim.lr=3e-3 schedule.warmup_steps=50
        paths.results="$out/results" paths.checkpoints=/tmp/adagc-ckpt)
$cli run -m clip=global,adagc "${common[@]}" 2>&1 | tail -n 12
python3 - "$out/results" <<'PY' | tee "$out/throughput.txt"
import json, pathlib, sys
for summary in sorted(pathlib.Path(sys.argv[1]).glob("runs/*/summary.json")):
    s = json.loads(summary.read_text())  # tokens_per_s and mfu: the median step after the warm-up
    print(f"{s['clip']:8s} params={s['params']:,} final_loss={s['final_train_loss']:.3f} val_ppl={s['val_ppl']:.1f} "
          f"median_tok/s={s['tokens_per_s']:,.0f} mfu_median={s['mfu']:.1f}% wall_tok/s={s['tokens_per_s_wall']:,.0f} "
          f"compile_s={s['compile_s']:.0f} spikes(olmo_core any)={s['spike_score']['olmo_core']['counts']['any']} "
          f"wall_s={s['wall_s']:.0f}")
PY
