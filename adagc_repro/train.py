"""The training loop: one function, read top to bottom.

    build data, task and components (parallelized) → resume from the run's recorded checkpoint →
    for each step: accumulate gradients on this rank's share → reduce loss across ranks → clip (the
    plug-in) → skip or step the optimizer → log → validate → checkpoint (or stop on a signal)
    → final validation, evaluation, model export → summary.

Strategies plug in at the seams in components.py (model, optimizer, LR schedule, clipper) and
tasks/ (loss, validation, FLOPs). With torchrun the same loop runs on every rank: the config's
batch is global, each rank trains its contiguous share, and only rank 0 writes files; periodic
checkpoints are written in the background there (`train.async_checkpoint`, see checkpoint.py). Faults
(adagc_repro.faults, the `fault` group) act at named seams: model build and LR schedule (in
components.py), each micro-batch (in the loader), after backward (before clipping).

A step makes no host sync: the optimizer skip is decided on the device (optim/stepping.py) and each
step's metrics stay on the device until the next logging boundary (every `train.log_every` steps, and
at validation, telemetry, checkpoint and the last step), where they are read back in one transfer.
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
from adagc_repro.components import build_components, compile_enabled
from adagc_repro.config import run_id as compute_run_id
from adagc_repro.data import StepLoader, build_training_data, check_epochs, epoch_of, epoch_summary
from adagc_repro.distributed import collectives
from adagc_repro.errors import ConfigError
from adagc_repro.faults import build_faults
from adagc_repro.feedback import status
from adagc_repro.metrics.device_metrics import DeviceMetrics
from adagc_repro.metrics.profiling import StepProfiler, phase
from adagc_repro.metrics.throughput import mfu, steady_throughput
from adagc_repro.metrics.timing import StepTimer
from adagc_repro.optim.folded_adamw import build_folding
from adagc_repro.optim.stepping import step_clipped
from adagc_repro.run_log import RunLog
from adagc_repro.seeding import capture_rng, restore_rng, seed_everything
from adagc_repro.tasks import build_task

NONFINITE, SPIKE = "skip/nonfinite", "skip/spike"  # device flags, turned into the row's "skipped"


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
    steps = int(tcfg.steps)
    device = collectives.local_device(resolve_device(tcfg.device))
    seed_everything(int(cfg.seed), deterministic=bool(tcfg.deterministic))
    task = build_task(cfg)
    with collectives.main_rank_first():  # rank 0 fills the data cache, the others read it
        data = build_training_data(cfg)
    faults = build_faults(cfg.get("fault"), seed=int(cfg.seed), rank=collectives.rank())
    parts = build_components(cfg, vocab_size=data.vocab_size, device=device, faults=faults)
    model, runner, optimizer, scheduler, clipper = parts.model, parts.runner, parts.optimizer, parts.scheduler, parts.clipper
    monitor = SpikeMonitor(**OmegaConf.to_container(cfg.spike.monitor, resolve=True))
    state = TrainState()

    checkpoints = open_checkpoints(Path(cfg.paths.checkpoints) / compute_run_id(cfg), run_dir,
                                   keep=int(tcfg.keep_checkpoints), distributed=collectives.world_size() > 1,
                                   asynchronous=bool(tcfg.async_checkpoint))
    stateful = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "clipper": clipper, "spike_monitor": monitor}
    restored = checkpoints.load_latest(stateful)
    if restored is not None:
        state = TrainState(**restored["train_state"])
        if "rng" in restored:
            restore_rng(restored["rng"])
        else:  # a rank the checkpoint did not have (resumed on more processes)
            seed_everything(int(cfg.seed) + 7919 * state.step + collectives.rank())
        notice(f"resuming from step {state.step}")

    def save_checkpoint(background: bool = False) -> None:
        checkpoints.save(state.step, stateful, background=background, train_state=asdict(state), rng=capture_rng())

    clipper.attach(model)  # before the first backward: strategies that watch every micro-batch hook in here
    compiled = compile_enabled(tcfg.compile, device)
    if compiled:
        clipper.compile()  # the per-tensor decide + scale as fused kernels (clipping/fused.py)
    folded = build_folding(tcfg.fold_clip, optimizer, clipper, model, compiled)  # None: the clipper scales
    autocast = precision_context(tcfg.precision, device)
    micro_batch, accum = int(tcfg.batch_size), int(tcfg.grad_accum)  # micro_batch is global: over all ranks
    collectives.rank_share(micro_batch)  # one clear error when the global batch does not split over the ranks
    samples_per_step = micro_batch * accum
    tokens_per_step = samples_per_step * task.sample_len
    check_epochs(steps, samples_per_step, len(data.train), task.sample_len, cfg.data.get("max_epochs"))
    # the rank's micro-batches of each step, fetched ahead; the position is a pure function of the step
    batches = StepLoader(data.train, seed=int(cfg.seed), rank=collectives.rank(), world_size=collectives.world_size(),
                         micro_batch=micro_batch, accum=accum, start_step=state.step, device=device,
                         prepare=faults.before_forward if faults.changes_batches else None)
    fpt = task.flops_per_token(model)
    peak = peak_flops_for(device, tcfg.precision) if fpt else None
    val_count = min(len(data.val), micro_batch * int(tcfg.val_batches))
    evaluations_here = task.runs_evaluations and collectives.world_size() == 1  # distributed: `adagc-repro eval` after

    def validate() -> dict[str, float]:
        with autocast:
            return task.validate(runner, data.val, count=val_count, micro_batch=micro_batch, device=device)

    eval_every = int(cfg.eval.get("every_n_steps") or 0) if evaluations_here else 0
    log = RunLog(run_dir, cfg, resume_after_step=state.step, enabled=collectives.is_main())
    timer = StepTimer(device, total_steps=steps - state.step)
    profiler = StepProfiler(run_dir / "profile", int(tcfg.profile_at), enabled=collectives.is_main(), pause=timer.pause)
    pending = DeviceMetrics()  # this window's steps, read back at the next logging boundary

    def write_rows(flushed: list[tuple[dict[str, Any], float]], extra: dict[str, Any]) -> None:
        """Log the steps read back from the device: count skips, update the spike monitor, advance the bar."""
        for i, (row, seconds) in enumerate(flushed):
            metrics = host_metrics(row, seconds, tokens_per_step, fpt, peak)
            state.train_seconds += seconds
            record_skip(state, metrics["step"], nonfinite=metrics["skipped"] == "nonfinite",
                        skipped=metrics["skipped"] is not None, max_in_a_row=int(tcfg.max_nonfinite_skips))
            # every step, as the summary's spike score: a non-finite value counts as a step, never as a spike
            metrics.update(monitor.update(metrics["step"], metrics["loss"], metrics.get("grad_norm")))
            if i == len(flushed) - 1:
                metrics.update(extra)
            log.write(metrics)
            progress.advance(metrics)

    model.train()
    # periodic checkpoints may be written while training goes on; the loop's end waits for the last one
    with (stop_requests() as stop, log.progress(total=steps, completed=state.step) as progress,
          checkpoints.background_writes()):
        while state.step < steps:
            step = state.step + 1
            profiler.before(step)
            timer.start()
            local_loss, local_extras = accumulate_gradients(runner, task, next(batches), autocast, device)
            faults.after_backward(model, step)
            # One all-reduce carries the loss, the extras and the stop flag: every rank decides alike.
            reduced = collectives.mean_across_ranks(torch.stack([local_loss, *local_extras.values(), stop.flag(device)]))
            loss = reduced[0]
            with phase("clip"), count_collectives() as comm:
                stats = clipper(model, loss=loss, scale=folded is None)
            nonfinite = stats.nonfinite | ~torch.isfinite(loss)
            with phase("optimizer"):
                step_clipped(optimizer, nonfinite | stats.spike, stats, folded)  # decided on the device: no host sync
                optimizer.zero_grad(set_to_none=True)
            lr = optimizer.param_groups[0]["lr"]
            with warnings.catch_warnings():  # a skipped first step calls the scheduler before the optimizer
                warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
                scheduler.step()
            state.step, state.tokens = step, state.tokens + tokens_per_step
            pending.add(
                {"step": step, "lr": lr, "tokens": state.tokens, "clip/collectives": comm.calls,
                 "clip/comm_bytes": comm.bytes, "data/epoch": epoch_of(step, samples_per_step, len(data.train)),
                 **faults.events(step)},
                {"loss": loss, **stats.metric_tensors(), NONFINITE: nonfinite, SPIKE: stats.spike,
                 **{f"train/{key}": value for key, value in zip(local_extras, reduced[1:-1], strict=True)}},
            )
            timer.stop()
            profiler.after(step)

            telemetry_due = tcfg.telemetry_every and step % int(tcfg.telemetry_every) == 0 and hasattr(clipper, "telemetry")
            val_due = tcfg.val_every and step % int(tcfg.val_every) == 0 and step < steps
            eval_due = eval_every and step % eval_every == 0 and step < steps
            checkpointing = step < steps and tcfg.checkpoint_every and step % int(tcfg.checkpoint_every) == 0
            if not (telemetry_due or val_due or eval_due or checkpointing or step % max(1, int(tcfg.log_every)) == 0
                    or step == steps):
                continue
            flushed = list(zip(pending.flush(), timer.flush(), strict=True))  # the window's one host sync
            extra: dict[str, Any] = {"telemetry": clipper.telemetry(stats)} if telemetry_due else {}
            if val_due:
                extra.update(validate())
            if eval_due:
                extra.update(eval_metrics(run_configured_evaluations(cfg, model, data.tokenizer, device, step) or {}))
            write_rows(flushed, extra)
            checkpoints.record_if_written()
            if bool(reduced[-1]) and step < steps:  # a stop asked for on any rank, seen at this boundary
                batches.close()
                save_checkpoint()
                log.close()
                notice(f"stopped at step {step}; run the same command to resume")
                raise TrainingInterrupted(step)
            if checkpointing:
                with progress.note(f"writing checkpoint step {step}"):  # with async writes: only their start
                    save_checkpoint(background=True)

    batches.close()
    final_val = validate()
    log.write({"step": state.step, **final_val, "final": True})
    if tcfg.final_checkpoint:
        with status(f"writing the final checkpoint (step {state.step})"):
            save_checkpoint()
    with status("exporting the final model"):
        final_model = checkpoints.export_final(model, data.tokenizer, getattr(torch, str(tcfg.export_dtype)))
    evaluation = run_configured_evaluations(cfg, model, data.tokenizer, device, state.step) if evaluations_here else None
    if evaluation:
        log.write_eval(evaluation)
    log.close()
    return log.summary(
        state=state,
        final_val=final_val,
        throughput=steady_throughput(timer.step_seconds, tokens_per_step, warmup=timer.warmup,
                                     steady_wall_s=timer.steady_wall_s, flops_per_token=fpt, peak=peak),
        params=count_parameters(model),
        flops_per_token=fpt,
        peak_flops=peak,
        device=str(device),
        world_size=collectives.world_size(),
        peak_memory_gib=peak_memory_gib(device),
        final_model=str(final_model),
        wall_s=time.perf_counter() - started,
        num_documents=getattr(data, "num_documents", None),
        faults=faults.summary(steps),
        profile_phases_ms=profiler.phase_ms,
        fold_clip=folded is not None,
        **epoch_summary(state.step, samples_per_step, len(data.train), task.sample_len),
        **getattr(data, "facts", {}),
    )


def accumulate_gradients(runner, task, micro_batches, autocast, device):
    """Forward/backward this rank's micro-batches of the step; returns the mean loss and extras
    (device tensors, nothing read back)."""
    total = torch.zeros((), device=device)
    extras_total: dict[str, torch.Tensor] = {}
    accum = len(micro_batches)
    for batch in micro_batches:
        with autocast:
            loss, extras = task.forward_loss(runner, batch)
        (loss / accum).backward()
        total += loss.detach().float()
        for key, value in extras.items():
            extras_total[key] = extras_total.get(key, 0.0) + value.detach().float().reshape(()) / accum
    return total / accum, extras_total


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


class _StopRequest:
    """The stop flag lives in a host tensor (pinned where CUDA is present): each step copies it to the
    device without a sync, and the signal handler only writes host memory."""

    def __init__(self):
        self.requested = False
        self._host = torch.zeros((), pin_memory=torch.cuda.is_available())

    def request(self) -> None:
        self.requested = True
        self._host.fill_(1.0)

    def flag(self, device) -> torch.Tensor:
        return self._host.to(device, non_blocking=True)


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
        stop.request()

    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
    """Dense peak FLOP/s of all ranks together (None on CPU or an unknown GPU)."""
    if device.type != "cuda":
        return None
    from adagc_repro.metrics.throughput import peak_flops

    one = peak_flops(torch.cuda.get_device_name(device), "bf16" if precision in ("auto", "bf16") else "fp32")
    return one * collectives.world_size() if one else None
