"""The training loop: one function, read top to bottom.

    build data and components → resume from the last checkpoint → for each step:
    accumulate gradients → clip (the plug-in) → skip or step the optimizer → log → validate → checkpoint
    → final validation, evaluation, model export → summary.

Strategies plug in at four seams only (components.py): model, optimizer, LR schedule, clipper.
Faults (adagc_repro.faults, the `fault` group) act at named seams: model build and LR schedule (in
components.py), before forward (each micro-batch), after backward (before clipping).
"""

from __future__ import annotations

import contextlib
import math
import re
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from adagc_repro.checkpoint import Checkpointer
from adagc_repro.components import build_components
from adagc_repro.config import run_id as compute_run_id
from adagc_repro.data import BlockSampler, build_training_data, is_contrastive
from adagc_repro.errors import ConfigError
from adagc_repro.faults import build_faults
from adagc_repro.run_log import RunLog
from adagc_repro.seeding import capture_rng, restore_rng, seed_everything


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


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
    from adagc_repro.models import count_parameters, flops_per_token, forward_loss

    started = time.perf_counter()
    tcfg = cfg.train
    device = resolve_device(tcfg.device)
    seed_everything(int(cfg.seed), deterministic=bool(tcfg.deterministic))
    data = build_training_data(cfg)
    contrastive = is_contrastive(cfg.model)
    faults = build_faults(cfg.get("fault"), seed=int(cfg.seed))
    parts = build_components(cfg, vocab_size=data.vocab_size, device=device, faults=faults)
    model, optimizer, scheduler, clipper = parts.model, parts.optimizer, parts.scheduler, parts.clipper
    monitor = SpikeMonitor(**OmegaConf.to_container(cfg.spike.monitor, resolve=True))
    state = TrainState()

    run_id = compute_run_id(cfg)
    checkpointer = Checkpointer(Path(cfg.paths.checkpoints) / run_id, keep=int(tcfg.keep_checkpoints))
    stateful = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "clipper": clipper, "spike_monitor": monitor}
    restored = checkpointer.load_latest(stateful)
    if restored is not None:
        state = TrainState(**restored["train_state"])
        restore_rng(restored["rng"])

    forward_model = torch.compile(model) if tcfg.compile else model
    autocast = precision_context(tcfg.precision, device)
    sampler = BlockSampler(len(data.train), seed=int(cfg.seed))
    micro_batch, accum = int(tcfg.batch_size), int(tcfg.grad_accum)
    text_len = int(cfg.model.max_position_embeddings) if contrastive else int(tcfg.seq_len)
    tokens_per_step = micro_batch * accum * text_len
    fpt = None if contrastive else flops_per_token(model, text_len)
    peak = peak_flops_for(device, tcfg.precision) if fpt else None
    val_count = min(len(data.val), micro_batch * int(tcfg.val_batches))

    def validate() -> dict[str, float]:
        with autocast:
            return validation_loss(forward_model, forward_loss, data.val, val_count, micro_batch, device, contrastive)

    eval_every = 0 if contrastive else int(cfg.eval.get("every_n_steps") or 0)
    log = RunLog(run_dir, cfg, resume_after_step=state.step)
    model.train()
    with log.progress(total=int(tcfg.steps), completed=state.step) as progress:
        while state.step < int(tcfg.steps):
            step = state.step + 1
            step_start = time.perf_counter()
            loss, extras = accumulate_gradients(
                forward_model, forward_loss, data.train, sampler, autocast, device,
                first_sample=(step - 1) * micro_batch * accum, micro_batch=micro_batch, accum=accum,
                prepare=lambda batch, micro: faults.before_forward(batch, step, micro),
            )
            faults.after_backward(model, step)
            stats = clipper(model, loss=loss)
            skipped = bool(stats.skipped)
            reason = stats.skip_reason if skipped else None  # a second sync only on skipped steps
            loss_value = float(loss)
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
                "lr": lr,
                "tokens": state.tokens,
                "tokens_per_s": tokens_per_step / step_seconds,
                "skipped": "nonfinite" if nonfinite else reason,
                **{f"train/{key}": value for key, value in extras.items()},
                **faults.events(step),
            }
            if peak:
                metrics["mfu"] = 100.0 * metrics["tokens_per_s"] * fpt / peak
            if not nonfinite:
                metrics.update(monitor.update(step, loss_value, metrics.get("grad_norm") or 0.0))
            if tcfg.telemetry_every and step % int(tcfg.telemetry_every) == 0 and hasattr(clipper, "telemetry"):
                metrics["telemetry"] = clipper.telemetry(stats)
            if tcfg.val_every and step % int(tcfg.val_every) == 0 and step < int(tcfg.steps):
                metrics.update(validate())
            if eval_every and step % eval_every == 0 and step < int(tcfg.steps):
                metrics.update(eval_metrics(run_configured_evaluations(cfg, model, data.tokenizer, device, step) or {}))
            log.write(metrics)
            progress.advance(metrics)
            if step < int(tcfg.steps) and tcfg.checkpoint_every and step % int(tcfg.checkpoint_every) == 0:
                checkpointer.save(step, stateful, train_state=asdict(state), rng=capture_rng())

    final_val = validate()
    log.write({"step": state.step, **final_val, "final": True})
    checkpointer.save(state.step, stateful, train_state=asdict(state), rng=capture_rng())
    final_model = checkpointer.export_final(model, data.tokenizer)
    evaluation = None if contrastive else run_configured_evaluations(cfg, model, data.tokenizer, device, state.step)
    if evaluation:
        log.write_eval(evaluation)
    log.close()
    return log.summary(
        state=state,
        final_val=final_val,
        params=count_parameters(model),
        flops_per_token=fpt,
        peak_flops=peak,
        device=str(device),
        final_model=str(final_model),
        wall_s=time.perf_counter() - started,
        num_documents=getattr(data, "num_documents", None),
        faults=faults.summary(int(tcfg.steps)),
    )


def accumulate_gradients(
    model, forward_loss, train_set, sampler, autocast, device, *, first_sample, micro_batch, accum, prepare
):
    """Forward/backward `accum` micro-batches; gradients, loss and extras end up as means over them.

    `prepare(batch, micro)` sees each micro-batch on the host before it moves to the device (faults).
    """
    total = torch.zeros((), device=device)
    extras_total: dict[str, torch.Tensor] = {}
    for micro in range(accum):
        indices = sampler.indices(first_sample + micro * micro_batch, micro_batch)
        host_batch = prepare(train_set.batch(indices), micro)
        batch = {k: v.to(device, non_blocking=True) for k, v in host_batch.items()}
        with autocast:
            loss, extras = forward_loss(model, batch)
        (loss / accum).backward()
        total += loss.detach().float()
        for key, value in extras.items():
            extras_total[key] = extras_total.get(key, 0.0) + value.float() / accum
    return total / accum, {key: float(value) for key, value in extras_total.items()}


@torch.no_grad()
def validation_loss(model, forward_loss, val_set, count, micro_batch, device, contrastive) -> dict[str, float | None]:
    """Held-out loss (token-level mean NLL and perplexity for language models)."""
    if not contrastive:
        from adagc_repro.eval.perplexity import evaluate_blocks

        result = evaluate_blocks(model, val_set.blocks(count), batch_size=micro_batch, device=device)
        return {"val/loss": result["loss"], "val/ppl": result["ppl"]}
    was_training = model.training
    model.eval()
    losses = []
    for start in range(0, count, micro_batch):
        batch = {k: v.to(device) for k, v in val_set.batch(range(start, min(start + micro_batch, count))).items()}
        losses.append(float(forward_loss(model, batch)[0]))
    model.train(was_training)
    return {"val/loss": sum(losses) / len(losses), "val/ppl": None}


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


def peak_flops_for(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda":
        return None
    from adagc_repro.metrics.throughput import peak_flops

    return peak_flops(torch.cuda.get_device_name(device), "bf16" if precision in ("auto", "bf16") else "fp32")
