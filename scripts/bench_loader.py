"""The data loader's share of step time: how long each training step waits for its batches.

    python scripts/bench_loader.py --out loader.json [--steps 60] [OVERRIDES...]
e.g. model=llama_130m train.batch_size=16 train.seq_len=1024 data=site_docs

Runs the training step of adagc_repro.train (forward/backward, clip, optimizer step) on batches from
the prefetching StepLoader, synchronising the device at the end of every step, and times the call
that hands the step its micro-batches against the whole step. The first steps warm up and are left out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from adagc_repro.components import build_components
from adagc_repro.config import compose
from adagc_repro.data import StepLoader, build_training_data
from adagc_repro.faults import build_faults
from adagc_repro.tasks import build_task
from adagc_repro.train import accumulate_gradients, precision_context, resolve_device


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    args, overrides = parser.parse_known_args()
    cfg = compose(overrides)
    device = resolve_device(cfg.train.device)
    data = build_training_data(cfg)
    parts = build_components(cfg, vocab_size=data.vocab_size, device=device, faults=build_faults(None, seed=0))
    task = build_task(cfg)
    autocast = precision_context(cfg.train.precision, device)
    micro_batch, accum = int(cfg.train.batch_size), int(cfg.train.grad_accum)
    batches = StepLoader(data.train, seed=0, rank=0, world_size=1, micro_batch=micro_batch, accum=accum,
                         start_step=0, device=device)
    waits, steps = [], []
    for step in range(args.warmup + args.steps):
        started = time.perf_counter()
        micro_batches = next(batches)
        waited = time.perf_counter() - started
        accumulate_gradients(parts.runner, task, micro_batches, autocast, device)
        parts.clipper(parts.model)
        parts.optimizer.step()
        parts.optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            waits.append(waited)
            steps.append(time.perf_counter() - started)
    batches.close()
    tokens = micro_batch * accum * int(cfg.train.seq_len)
    result = {
        "overrides": overrides,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "steps_timed": len(steps),
        "tokens_per_step": tokens,
        "mean_step_ms": 1e3 * sum(steps) / len(steps),
        "mean_loader_wait_ms": 1e3 * sum(waits) / len(waits),
        "max_loader_wait_ms": 1e3 * max(waits),
        "loader_share_percent": 100.0 * sum(waits) / sum(steps),
        "tokens_per_s": tokens * len(steps) / sum(steps),
        "train_tokens": len(data.train) * int(cfg.train.seq_len),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
