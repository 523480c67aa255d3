"""`adagc-repro bench step`: the project's training loop against a plain compiled loop, in one process.

The project's side is `train()` itself on the configured run (its data, clipper, optimizer, schedule,
logging). The plain side is what a researcher would write: the same transformers model and shapes,
bf16 autocast (the loop's precision), torch.compile (when the loop compiles), fused AdamW and
`clip_grad_norm_`, on one fixed batch of random tokens; it calls the model as anyone would, without the
loss's `implicit_causal` (models/attention.py), so transformers' own masking applies under compile,
a dense causal mask. A third loop, `plain_causal`, is the plain one calling the model with the
project's implicit causal mask: the project's kernels without its bookkeeping (data loader, device
metrics, schedule, skip decision, clipper plug-in), so that project / plain_causal is the loop's own
cost and plain_causal / plain the attention's gain. All are timed by the same `StepTimer` and
summarised by the same `steady_throughput` (median step after the warm-up, MFU from one formula).
Clipping's share of a step is the median GPU time of one clipping call on the model's real gradients
(the configured clipper, compiled and folded into AdamW as the loop runs it (`fold_clip`: the
coefficients are then applied inside the optimizer step); `clip_grad_norm_` for the plain loop),
queued with the host ahead as in a training step, over that loop's median step time. With `--profile`,
the result also holds each loop's clipping, optimizer and other (forward, backward) time per profiled
step (`phases_ms`; GPU kernel time on CUDA: the clipping as it runs inside the loop).
"""

from __future__ import annotations

import gc
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from adagc_repro.clipping.bench import median_call_ms
from adagc_repro.metrics.profiling import StepProfiler, phase
from adagc_repro.metrics.throughput import steady_throughput
from adagc_repro.metrics.timing import StepTimer
from adagc_repro.provenance import tuning_env, versions

BENCH_DEFAULTS = (
    "train.steps=60", "train.batch_size=16", "train.seq_len=1024", "train.val_every=0", "train.val_batches=1",
    "train.checkpoint_every=0", "train.final_checkpoint=false", "train.telemetry_every=0", "train.progress=false",
    "train.log_every=20",
)
CLIP_REPEATS, CLIP_WARMUP = 20, 3
MEASURED = ("tokens_per_s", "tokens_per_s_wall", "mfu", "step_s", "compile_s")


def run_step_bench(overrides: list[str], profile: Path | None = None) -> dict[str, Any]:
    """Measure the three loops on the config `overrides` select (after BENCH_DEFAULTS); one result dict.
    With `profile`, the same three steady steps of each loop are profiled into profile/<loop>/."""
    from adagc_repro.config import compose

    with tempfile.TemporaryDirectory(prefix="adagc-bench-") as scratch:  # run folder and checkpoints
        paths = [f"paths.results={scratch}/results", f"paths.checkpoints={scratch}/ckpt"]
        cfg = compose([*BENCH_DEFAULTS, *paths, *overrides])
        profile_at = _profiled_step(cfg) if profile else 0
        cfg.train.profile_at = profile_at
        project = _project_loop(cfg, Path(scratch) / "run")
        if profile:
            shutil.copytree(Path(scratch) / "run" / "profile", Path(profile) / "project", dirs_exist_ok=True)
        _release_memory()
        plain, model, backward = _plain_loop(cfg, Path(profile or scratch) / "plain", profile_at)
        backward()  # real gradients of this model, for timing one clipping call of each loop
        clip_ms = _clipping_ms(cfg, model, scale=not project["fold_clip"])
        del model, backward
        _release_memory()
        plain_causal = _plain_loop(cfg, Path(profile or scratch) / "plain_causal", profile_at, implicit_causal=True)[0]
    rows = {"project": project, "plain": plain, "plain_causal": plain_causal}
    for name, row in rows.items():
        row["clip_ms"] = clip_ms["project" if name == "project" else "plain"]
        row["clip_share"] = row["clip_ms"] / 1e3 / row["step_s"] if row["step_s"] and row["clip_ms"] else None
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions(), "tuning_env": tuning_env(),
            "overrides": list(overrides),
            "model": cfg.model.name, "clip": cfg.clip.name, "optim": cfg.optim.name,
            "batch_size": int(cfg.train.batch_size), "seq_len": int(cfg.train.seq_len), "steps": int(cfg.train.steps),
            "device": str(_device(cfg)), "params": project.pop("params"), **rows,
            "speedup": _ratio(project, plain), "speedup_same_kernels": _ratio(project, plain_causal)}


def _ratio(loop: dict[str, Any], baseline: dict[str, Any]) -> float | None:
    """`loop`'s tokens/s over `baseline`'s."""
    if loop["tokens_per_s"] and baseline["tokens_per_s"]:
        return loop["tokens_per_s"] / baseline["tokens_per_s"]
    return None


def _project_loop(cfg, run_dir: Path) -> dict[str, Any]:
    from adagc_repro.train import train

    device = _device(cfg)
    _reset_peak_memory(device)
    summary = train(cfg, run_dir)
    return {**{key: summary.get(key) for key in MEASURED}, "peak_memory_gb": _peak_memory_gb(device),
            "params": summary["params"], "phases_ms": summary["profile_phases_ms"], "fold_clip": summary["fold_clip"]}


def _profiled_step(cfg) -> int:
    """The first of the profiled steps: half-way, well after compilation and the timer's warm-up."""
    return max(1, int(cfg.train.steps) // 2)


def _plain_loop(cfg, profile_folder: Path, profile_at: int, implicit_causal: bool = False):
    """HF model, fused AdamW, clip_grad_norm_, compiled when the project compiles: (row, model, backward).
    With `implicit_causal`, the model is called as the project's loss calls it (no dense mask)."""
    from adagc_repro.data import build_training_data
    from adagc_repro.models import build_model, causal_kwargs, flops_per_token
    from adagc_repro.train import compile_enabled, peak_flops_for, precision_context

    device, steps = _device(cfg), int(cfg.train.steps)
    batch, seq = int(cfg.train.batch_size), int(cfg.train.seq_len)
    vocab = build_training_data(cfg).vocab_size
    torch.manual_seed(int(cfg.seed))
    model = build_model(cfg.model, vocab, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                  fused=device.type == "cuda")
    forward = torch.compile(model) if compile_enabled(cfg.train.compile, device) else model
    autocast = precision_context(cfg.train.precision, device)
    tokens = torch.randint(0, vocab, (batch, seq), device=device)
    attention = causal_kwargs(model, {"input_ids": tokens}) if implicit_causal else {}

    def backward() -> None:
        with autocast:
            loss = forward(input_ids=tokens, labels=tokens, **attention).loss
        loss.backward()

    _reset_peak_memory(device)
    timer = StepTimer(device, total_steps=steps)
    profiler = StepProfiler(profile_folder, profile_at, pause=timer.pause)
    for step in range(1, steps + 1):
        profiler.before(step)
        timer.start()
        backward()
        with phase("clip"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        with phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        timer.stop()
        profiler.after(step)
    timer.flush()
    result = steady_throughput(timer.step_seconds, batch * seq, warmup=timer.warmup, steady_wall_s=timer.steady_wall_s,
                               flops_per_token=flops_per_token(model, seq),
                               peak=peak_flops_for(device, cfg.train.precision))
    row = {**{key: result[key] for key in MEASURED}, "peak_memory_gb": _peak_memory_gb(device),
           "phases_ms": profiler.phase_ms}
    return row, model, backward


def _clipping_ms(cfg, model: torch.nn.Module, scale: bool) -> dict[str, float]:
    """Median ms of one call of the configured clipper (compiled as the loop compiles it; `scale=False` where
    the loop folds the scaling into AdamW, which the optimizer phase then holds) and of clip_grad_norm_."""
    from adagc_repro.clipping import build_clipper
    from adagc_repro.config import hparams
    from adagc_repro.train import compile_enabled

    device = _device(cfg)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    clipper = build_clipper(cfg.clip.name, **hparams(cfg.clip, "name"))
    if compile_enabled(cfg.train.compile, device):
        clipper.compile()
    loss = torch.tensor(2.0, device=device)
    params = [p for _, p in named]
    return {  # timed by the GPU's work, with the host ahead as in a training step (clipping/bench.py)
        "project": median_call_ms(lambda: clipper(named, loss=loss, scale=scale), device, CLIP_REPEATS, CLIP_WARMUP, host_ahead=True),
        "plain": median_call_ms(lambda: torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True), device,
                             CLIP_REPEATS, CLIP_WARMUP, host_ahead=True),
    }


def _device(cfg) -> torch.device:
    from adagc_repro.train import resolve_device

    return resolve_device(cfg.train.device)


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    torch._dynamo.reset()
