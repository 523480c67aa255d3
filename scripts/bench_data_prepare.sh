#!/usr/bin/env bash
# Throughput of `adagc-repro data prepare` (MB/s of UTF-8 text, end to end: reading the source, training
# the BPE, tokenizing, writing shards) into a fresh cache, for the embedded corpora.
#   scripts/bench_data_prepare.sh OUT_DIR [WORKERS]
set -euo pipefail
out=${1:?usage: bench_data_prepare.sh OUT_DIR [WORKERS]}
workers=${2:-0}
mkdir -p "$out"
py=${PYTHON:-python3}
scratch=$(mktemp -d)
export ADAGC_REPRO_CACHE=$scratch/cache HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
trap 'rm -rf "$scratch"' EXIT
for source in stdlib_docs site_docs; do
  $py -m adagc_repro.cli data prepare data=$source --workers "$workers" --out "$scratch/prepare_$source.json" | tail -n 1
done
$py - "$out" "$workers" "$scratch" <<'PY'
import json, os, pathlib, platform, sys, time
import tokenizers, transformers
out = pathlib.Path(sys.argv[1])
rows = {p.stem: json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[3]).glob("prepare_*.json"))}
cores = len(os.sched_getaffinity(0))
summary = {"date": time.strftime("%Y-%m-%d"), "cores": cores, "load_average_1min_at_end": os.getloadavg()[0], "workers": int(sys.argv[2]) or min(cores, 16),
           "python": platform.python_version(), "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
           "runs": {name: {k: row[k] for k in ("seconds", "mb_per_s", "text_bytes", "documents", "tokens", "fingerprint")}
                    for name, row in rows.items()}}
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary["runs"]))
PY
