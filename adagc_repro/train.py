"""The training loop: one function, read top to bottom.

    build data and components → resume from the last checkpoint → for each step:
    accumulate gradients → clip (the plug-in) → skip or step the optimizer → log → validate → checkpoint
    → final validation, evaluation, model export → summary.

Strategies plug in at four seams only (components.py): model, optimizer, LR schedule, clipper.
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
from adagc_repro.metrics.device_metrics import DeviceMetrics
from adagc_repro.metrics.throughput import mfu, steady_throughput
from adagc_repro.metrics.timing import StepTimer
from adagc_repro.optim.stepping import step_unless
from adagc_repro.run_log import RunLog
from adagc_repro.seeding import capture_rng, restore_rng, seed_everything

NONFINITE, SPIKE = "skip/nonfinite", "skip/spike"  # device flags, turned into the row's "skipped"


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
    parts = build_components(cfg, vocab_size=data.vocab_size, device=device)
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

    forward_model = model
    if compile_enabled(tcfg.compile, device):
        forward_model = torch.compile(model)
        clipper.compile()  # the per-tensor decide + scale as fused kernels (clipping/fused.py)
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
    timer = StepTimer(device, total_steps=int(tcfg.steps) - state.step)
    pending = DeviceMetrics()  # this window's steps, read back at the next logging boundary

    def write_rows(flushed: list[tuple[dict[str, Any], float]], extra: dict[str, Any]) -> None:
        """Log the steps read back from the device: count skips, update the spike monitor, advance the bar."""
        for i, (row, seconds) in enumerate(flushed):
            metrics = host_metrics(row, seconds, tokens_per_step, fpt, peak)
            state.train_seconds += seconds
            record_skip(state, metrics["step"], nonfinite=metrics["skipped"] == "nonfinite",
                        skipped=metrics["skipped"] is not None, max_in_a_row=int(tcfg.max_nonfinite_skips))
            if metrics["skipped"] != "nonfinite":
                metrics.update(monitor.update(metrics["step"], metrics["loss"], metrics.get("grad_norm") or 0.0))
            if i == len(flushed) - 1:
                metrics.update(extra)
            log.write(metrics)
            progress.advance(metrics)

    model.train()
    with log.progress(total=int(tcfg.steps), completed=state.step) as progress:
        while state.step < int(tcfg.steps):
            step = state.step + 1
            timer.start()
            loss, extras = accumulate_gradients(
                forward_model, forward_loss, data.train, sampler, autocast, device,
                first_sample=(step - 1) * micro_batch * accum, micro_batch=micro_batch, accum=accum,
            )
            stats = clipper(model, loss=loss)
            nonfinite = stats.nonfinite | ~torch.isfinite(loss)
            step_unless(optimizer, nonfinite | stats.spike)  # decided on the device: no host sync
            optimizer.zero_grad(set_to_none=True)
            lr = optimizer.param_groups[0]["lr"]
            with warnings.catch_warnings():  # a skipped first step calls the scheduler before the optimizer
                warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
                scheduler.step()
            state.step, state.tokens = step, state.tokens + tokens_per_step
            pending.add({"step": step, "lr": lr, "tokens": state.tokens},
                        {"loss": loss, **stats.metric_tensors(), NONFINITE: nonfinite, SPIKE: stats.spike,
                         **{f"train/{key}": value for key, value in extras.items()}})
            timer.stop()

            telemetry_due = tcfg.telemetry_every and step % int(tcfg.telemetry_every) == 0 and hasattr(clipper, "telemetry")
            val_due = tcfg.val_every and step % int(tcfg.val_every) == 0 and step < int(tcfg.steps)
            eval_due = eval_every and step % eval_every == 0 and step < int(tcfg.steps)
            checkpointing = step < int(tcfg.steps) and tcfg.checkpoint_every and step % int(tcfg.checkpoint_every) == 0
            if not (telemetry_due or val_due or eval_due or checkpointing or step % max(1, int(tcfg.log_every)) == 0
                    or step == int(tcfg.steps)):
                continue
            flushed = list(zip(pending.flush(), timer.flush(), strict=True))  # the window's one host sync
            extra: dict[str, Any] = {"telemetry": clipper.telemetry(stats)} if telemetry_due else {}
            if val_due:
                extra.update(validate())
            if eval_due:
                extra.update(eval_metrics(run_configured_evaluations(cfg, model, data.tokenizer, device, step) or {}))
            write_rows(flushed, extra)
            if checkpointing:
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
        throughput=steady_throughput(timer.step_seconds, tokens_per_step, warmup=timer.warmup,
                                     steady_wall_s=timer.steady_wall_s, flops_per_token=fpt, peak=peak),
        flops_per_token=fpt,
        peak_flops=peak,
        device=str(device),
        final_model=str(final_model),
        wall_s=time.perf_counter() - started,
        num_documents=getattr(data, "num_documents", None),
    )


def accumulate_gradients(model, forward_loss, train_set, sampler, autocast, device, *, first_sample, micro_batch, accum):
    """Forward/backward `accum` micro-batches; gradients, loss and extras end up as means over them."""
    total = torch.zeros((), device=device)
    extras_total: dict[str, torch.Tensor] = {}
    for micro in range(accum):
        indices = sampler.indices(first_sample + micro * micro_batch, micro_batch)
        batch = {k: v.to(device, non_blocking=True) for k, v in train_set.batch(indices).items()}
        with autocast:
            loss, extras = forward_loss(model, batch)
        (loss / accum).backward()
        total += loss.detach().float()
        for key, value in extras.items():
            extras_total[key] = extras_total.get(key, 0.0) + value.float() / accum
    return total / accum, extras_total


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


def host_metrics(row: dict[str, Any], seconds: float, tokens_per_step: int, fpt, peak) -> dict[str, Any]:
    """One step's row as logged: non-finite numbers as None, the skip reason, its time and throughput."""
    nonfinite, spike = bool(row.pop(NONFINITE)), bool(row.pop(SPIKE))
    metrics = {key: (value if not isinstance(value, float) or math.isfinite(value) else None) for key, value in row.items()}
    tokens_per_s = tokens_per_step / seconds if seconds > 0 else None
    metrics.update(skipped="nonfinite" if nonfinite else ("spike" if spike else None), step_s=seconds,
                   tokens_per_s=tokens_per_s)
    if peak:
        metrics["mfu"] = mfu(tokens_per_s, fpt, peak)
    return metrics


def record_skip(state: TrainState, step: int, *, nonfinite: bool, skipped: bool, max_in_a_row: int) -> None:
    if nonfinite:
        state.nonfinite_skips += 1
        state.consecutive_nonfinite += 1
        if state.consecutive_nonfinite >= max_in_a_row:
            raise NonFiniteTrainingError(
                f"step {step}: {state.consecutive_nonfinite} consecutive steps with a non-finite loss or "
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


def compile_enabled(setting: str | bool, device: torch.device) -> bool:
    """`train.compile`: auto compiles on CUDA only (on CPU, compiling costs more than small models gain)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


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
