"""Benchmark every clipper against torch.nn.utils.clip_grad_norm_(foreach=True) on Llama-shaped gradients.

    PYTHONPATH=. python scripts/bench_clipping.py --device cuda --sizes 134m,1.35b,7b-shaped --repeats 20

Prints a table and writes the rows as JSON (ms per step and ratio to global clipping). Needs only torch.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from adagc_repro.clipping.bench import LLAMA_SIZES, format_table, run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--sizes", default="134m,1.35b,7b-shaped", help=f"comma list of {', '.join(LLAMA_SIZES)}")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per clipper (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    parser.add_argument("--dtype", default="float32", help="gradient dtype, e.g. float32 or bfloat16")
    parser.add_argument("--clippers", default=None, help="comma list of clipper names (default: all)")
    parser.add_argument("--out", type=Path, default=Path("results/bench/clipping.json"))
    args = parser.parse_args()
    rows = run_bench(device=args.device, sizes=args.sizes.split(","), repeats=args.repeats, warmup=args.warmup,
                     dtype=args.dtype, names=args.clippers.split(",") if args.clippers else None)
    print(format_table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.out.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(rows, indent=1))
    os.replace(temporary, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
