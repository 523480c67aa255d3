"""The training loop: one function, read top to bottom.

    build data, task and components (parallelized) → resume from the run's recorded checkpoint →
    for each step: accumulate gradients on this rank's share → reduce loss across ranks → clip (the
    plug-in) → skip or step the optimizer → log → validate → checkpoint (or stop on a signal)
    → final validation, evaluation, model export → summary.

Strategies plug in at the seams in components.py (model, optimizer, LR schedule, clipper) and
tasks/ (loss, validation, FLOPs). With torchrun the same loop runs on every rank: the config's
batch is global, each rank trains its contiguous share, and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import math
import re
import signal
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from adagc_repro.checkpoint import notice, open_checkpoints
from adagc_repro.clipping.norms import count_collectives
from adagc_repro.components import build_components
from adagc_repro.config import run_id as compute_run_id
from adagc_repro.data import BlockSampler, build_training_data
from adagc_repro.distributed import collectives
from adagc_repro.errors import ConfigError
from adagc_repro.run_log import RunLog
from adagc_repro.seeding import capture_rng, restore_rng, seed_everything
from adagc_repro.tasks import build_task


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM: the run stopped after a step and checkpointed it."""

    def __init__(self, step: int):
        super().__init__(f"stopped at step {step}; run the same command to resume")
        self.step = step


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    nonfinite_skips: int = 0
    spike_skips: int = 0
    consecutive_nonfinite: int = 0
    train_seconds: float = 0.0


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train the run described by `cfg`, writing metrics into `run_dir`; returns the summary dict."""
    from adagc_repro.eval.run_eval import eval_metrics
    from adagc_repro.metrics.spike import SpikeMonitor
    from adagc_repro.models import count_parameters

    started = time.perf_counter()
    tcfg = cfg.train
    device = collectives.local_device(resolve_device(tcfg.device))
    seed_everything(int(cfg.seed), deterministic=bool(tcfg.deterministic))
    task = build_task(cfg)
    task.check_world_size(collectives.world_size())
    with collectives.main_rank_first():  # rank 0 fills the data cache, the others read it
        data = build_training_data(cfg)
    parts = build_components(cfg, vocab_size=data.vocab_size, device=device)
    model, runner, optimizer, scheduler, clipper = parts.model, parts.runner, parts.optimizer, parts.scheduler, parts.clipper
    monitor = SpikeMonitor(**OmegaConf.to_container(cfg.spike.monitor, resolve=True))
    state = TrainState()

    checkpoints = open_checkpoints(Path(cfg.paths.checkpoints) / compute_run_id(cfg), run_dir,
                                   keep=int(tcfg.keep_checkpoints), distributed=collectives.world_size() > 1)
    stateful = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "clipper": clipper, "spike_monitor": monitor}
    restored = checkpoints.load_latest(stateful)
    if restored is not None:
        state = TrainState(**restored["train_state"])
        if "rng" in restored:
            restore_rng(restored["rng"])
        else:  # a rank the checkpoint did not have (resumed on more processes)
            seed_everything(int(cfg.seed) + 7919 * state.step + collectives.rank())
        notice(f"resuming from step {state.step}")

    def save_checkpoint() -> None:
        checkpoints.save(state.step, stateful, train_state=asdict(state), rng=capture_rng())

    clipper.attach(model)  # before the first backward: strategies that watch every micro-batch hook in here
    autocast = precision_context(tcfg.precision, device)
    sampler = BlockSampler(len(data.train), seed=int(cfg.seed))
    micro_batch, accum = int(tcfg.batch_size), int(tcfg.grad_accum)  # micro_batch is global: over all ranks
    rank_offset, rank_batch = collectives.rank_share(micro_batch)
    tokens_per_step = micro_batch * accum * task.sample_len
    fpt = task.flops_per_token(model)
    peak = peak_flops_for(device, tcfg.precision) if fpt else None
    val_count = min(len(data.val), micro_batch * int(tcfg.val_batches))
    evaluations_here = task.runs_evaluations and collectives.world_size() == 1  # distributed: `adagc-repro eval` after

    def validate() -> dict[str, float]:
        with autocast:
            return task.validate(runner, data.val, count=val_count, micro_batch=micro_batch, device=device)

    eval_every = int(cfg.eval.get("every_n_steps") or 0) if evaluations_here else 0
    log = RunLog(run_dir, cfg, resume_after_step=state.step, enabled=collectives.is_main())
    model.train()
    with stop_requests() as stop, log.progress(total=int(tcfg.steps), completed=state.step) as progress:
        while state.step < int(tcfg.steps):
            step = state.step + 1
            step_start = time.perf_counter()
            local_loss, local_extras = accumulate_gradients(
                runner, task, data.train, sampler, autocast, device,
                first_sample=(step - 1) * micro_batch * accum, micro_batch=micro_batch, accum=accum,
                rank_offset=rank_offset, rank_batch=rank_batch,
            )
            # One all-reduce carries the loss, the extras and the stop flag: every rank decides alike.
            reduced = collectives.mean_across_ranks(torch.stack([local_loss, *local_extras.values(), stop.flag(device)]))
            loss = reduced[0]
            with count_collectives() as comm:
                stats = clipper(model, loss=loss)
            skipped = bool(stats.skipped)
            reason = stats.skip_reason if skipped else None  # a second sync only on skipped steps
            loss_value, *extra_values, stopping = reduced.tolist()
            nonfinite = not math.isfinite(loss_value) or reason == "nonfinite"
            if not (skipped or nonfinite):
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            lr = optimizer.param_groups[0]["lr"]
            with warnings.catch_warnings():  # a skipped first step calls the scheduler before the optimizer
                warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
                scheduler.step()
            step_seconds = time.perf_counter() - step_start

            state.step, state.tokens = step, state.tokens + tokens_per_step
            state.train_seconds += step_seconds
            record_skip(state, nonfinite=nonfinite, skipped=skipped, max_in_a_row=int(tcfg.max_nonfinite_skips))
            metrics = {
                "step": step,
                "loss": loss_value if math.isfinite(loss_value) else None,
                **stats.as_metrics(),
                "clip/collectives": comm.calls,
                "clip/comm_bytes": comm.bytes,
                "lr": lr,
                "tokens": state.tokens,
                "tokens_per_s": tokens_per_step / step_seconds,
                "skipped": "nonfinite" if nonfinite else reason,
                **{f"train/{key}": value for key, value in zip(local_extras, extra_values, strict=True)},
            }
            if peak:
                metrics["mfu"] = 100.0 * metrics["tokens_per_s"] * fpt / (peak * collectives.world_size())
            # every step, as the summary's spike score: a non-finite value counts as a step, never as a spike
            metrics.update(monitor.update(step, metrics["loss"], metrics.get("grad_norm")))
            if tcfg.telemetry_every and step % int(tcfg.telemetry_every) == 0 and hasattr(clipper, "telemetry"):
                metrics["telemetry"] = clipper.telemetry(stats)
            if tcfg.val_every and step % int(tcfg.val_every) == 0 and step < int(tcfg.steps):
                metrics.update(validate())
            if eval_every and step % eval_every == 0 and step < int(tcfg.steps):
                metrics.update(eval_metrics(run_configured_evaluations(cfg, model, data.tokenizer, device, step) or {}))
            log.write(metrics)
            progress.advance(metrics)
            if stopping and step < int(tcfg.steps):
                save_checkpoint()
                log.close()
                notice(f"stopped at step {step}; run the same command to resume")
                raise TrainingInterrupted(step)
            if step < int(tcfg.steps) and tcfg.checkpoint_every and step % int(tcfg.checkpoint_every) == 0:
                save_checkpoint()

    final_val = validate()
    log.write({"step": state.step, **final_val, "final": True})
    save_checkpoint()
    final_model = checkpoints.export_final(model, data.tokenizer)
    evaluation = run_configured_evaluations(cfg, model, data.tokenizer, device, state.step) if evaluations_here else None
    if evaluation:
        log.write_eval(evaluation)
    log.close()
    return log.summary(
        state=state,
        final_val=final_val,
        params=count_parameters(model),
        flops_per_token=fpt,
        peak_flops=peak * collectives.world_size() if peak else None,
        device=str(device),
        world_size=collectives.world_size(),
        peak_memory_gib=peak_memory_gib(device),
        final_model=str(final_model),
        wall_s=time.perf_counter() - started,
        num_documents=getattr(data, "num_documents", None),
    )


def accumulate_gradients(runner, task, train_set, sampler, autocast, device, *, first_sample, micro_batch, accum,
                         rank_offset, rank_batch):
    """Forward/backward this rank's share of `accum` global micro-batches; returns the mean loss and
    extras (device tensors, nothing read back). Micro-batch m covers global samples
    [first + m·micro_batch, first + (m+1)·micro_batch); this rank takes `rank_batch` of them from `rank_offset`."""
    total = torch.zeros((), device=device)
    extras_total: dict[str, torch.Tensor] = {}
    for micro in range(accum):
        indices = sampler.indices(first_sample + micro * micro_batch + rank_offset, rank_batch)
        batch = {k: v.to(device, non_blocking=True) for k, v in train_set.batch(indices).items()}
        with autocast:
            loss, extras = task.forward_loss(runner, batch)
        (loss / accum).backward()
        total += loss.detach().float()
        for key, value in extras.items():
            extras_total[key] = extras_total.get(key, 0.0) + value.detach().float().reshape(()) / accum
    return total / accum, extras_total


class _StopRequest:
    def __init__(self):
        self.requested = False

    def flag(self, device) -> torch.Tensor:
        return torch.tensor(float(self.requested), device=device)


@contextlib.contextmanager
def stop_requests():
    """SIGINT/SIGTERM ask the loop to stop after the current step (and checkpoint it); a second
    SIGINT interrupts at once. Handlers are only installed from the main thread."""
    stop = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request(signum, frame):
        if stop.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.requested = True

    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def record_skip(state: TrainState, *, nonfinite: bool, skipped: bool, max_in_a_row: int) -> None:
    if nonfinite:
        state.nonfinite_skips += 1
        state.consecutive_nonfinite += 1
        if state.consecutive_nonfinite >= max_in_a_row:
            raise NonFiniteTrainingError(
                f"step {state.step}: {state.consecutive_nonfinite} consecutive steps with a non-finite loss or "
                f"gradient (train.max_nonfinite_skips={max_in_a_row})"
            )
        return
    state.consecutive_nonfinite = 0
    if skipped:
        state.spike_skips += 1


def run_configured_evaluations(cfg, model, tokenizer, device, step: int) -> dict[str, Any] | None:
    eval_cfg = OmegaConf.to_container(cfg.eval, resolve=True)
    if not any(isinstance(v, dict) and v.get("enabled") for v in eval_cfg.values()):
        return None
    from adagc_repro.eval.run_eval import run_evaluations

    return run_evaluations(model, tokenizer, eval_cfg, seq_len=int(cfg.train.seq_len), device=device, step=step)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device", f"'{name}' requested but CUDA is not available", ["auto", "cpu"])
    return device


def precision_context(precision: str, device: torch.device):
    """bf16 autocast on CUDA (weights and optimizer state stay fp32); plain fp32 elsewhere."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        if device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # the few fp32 matmuls left under autocast use TF32
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak allocated memory of the busiest rank's GPU (None on CPU)."""
    if device.type != "cuda":
        return None
    return collectives.max_across_ranks(torch.cuda.max_memory_allocated(device) / 2**30, device)


def peak_flops_for(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda":
        return None
    from adagc_repro.metrics.throughput import peak_flops

    return peak_flops(torch.cuda.get_device_name(device), "bf16" if precision in ("auto", "bf16") else "fp32")
