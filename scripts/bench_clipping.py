"""Benchmark every clipper against torch.nn.utils.clip_grad_norm_(foreach=True) on Llama-shaped gradients.

    PYTHONPATH=. python scripts/bench_clipping.py --device cuda --sizes 134m,1.35b,7b-shaped --repeats 20

Prints a table and writes the rows (ms per step, ratio to global clipping) to --out, by default
results/bench/clipping.json. Needs only torch. Same options as `adagc-repro bench`.
"""

from pathlib import Path

from adagc_repro.clipping.bench import main

if __name__ == "__main__":
    main(default_out=Path("results/bench/clipping.json"))
