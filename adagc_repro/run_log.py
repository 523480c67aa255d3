"""What a run writes while it trains: metrics.jsonl (the source of truth), an optional W&B mirror,
the progress bar, eval.json and the summary.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from adagc_repro.atomic import write_json, write_text
from adagc_repro.feedback import status

FINAL_LOSS_WINDOW = 10  # final_train_loss = mean of the last 10 finite step losses


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN/Inf: non-finite numbers are written as null (tables count them as divergence)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not Path(path).exists():
        return []
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):  # a line cut by a crash is dropped, not fatal
            rows.append(json.loads(line))
    return rows


class RunLog:
    def __init__(self, run_dir: Path, cfg: DictConfig, *, resume_after_step: int = 0, enabled: bool = True):
        """`enabled=False` (every rank but 0 of a distributed run) writes nothing and shows no progress."""
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.enabled = enabled
        self._handle = self._wandb = None
        if not enabled:
            return
        # On resume, steps after the checkpoint are replayed: drop their old lines first.
        kept = [row for row in read_jsonl(self.metrics_path) if row.get("step", 0) <= resume_after_step and not row.get("final")]
        write_text(self.metrics_path, "".join(json.dumps(row) + "\n" for row in kept))
        self._handle = open(self.metrics_path, "a", encoding="utf-8")
        self._wandb = _start_wandb(cfg, self.run_dir) if cfg.logger.name == "wandb" else None

    def write(self, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = finite_or_none(metrics)
        self._handle.write(json.dumps(row) + "\n")
        self._handle.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=row["step"])

    def write_eval(self, evaluation: dict[str, Any]) -> None:
        if not self.enabled:
            return
        path = self.run_dir / "eval.json"
        merged = json.loads(path.read_text()) if path.exists() else {}
        merged.update(finite_or_none(evaluation))
        write_json(path, merged)

    @contextlib.contextmanager
    def progress(self, *, total: int, completed: int):
        bar = _ProgressBar(total, completed, enabled=self.enabled and bool(self.cfg.train.progress),
                           every=int(self.cfg.train.log_every), announce=self.enabled)
        try:
            yield bar
        finally:
            bar.stop()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def summary(self, *, state, final_val: dict[str, float], throughput: dict[str, Any], **facts: Any) -> dict[str, Any]:
        """The run's summary; `throughput` is `metrics.throughput.steady_throughput` of this process's steps."""
        from adagc_repro.metrics.spike import summarize_spikes

        rows = [row for row in read_jsonl(self.metrics_path) if "loss" in row]
        losses = [row["loss"] for row in rows]
        grad_norms = [row.get("grad_norm") for row in rows]
        finite_losses = [x for x in losses if x is not None][-FINAL_LOSS_WINDOW:]
        cfg = self.cfg
        presets = OmegaConf.to_container(cfg.spike.presets, resolve=True)
        spikes = summarize_spikes(losses, grad_norms, presets)
        summary = {
            "run_id": self.run_dir.name,
            "status": "done",
            "model": cfg.model.name,
            "clip": cfg.clip.name,
            "optim": cfg.optim.name,
            "data": cfg.data.name,
            "seed": int(cfg.seed),
            "experiment": cfg.meta.experiment,
            "table": cfg.meta.table,
            "steps": state.step,
            "tokens": state.tokens,
            "final_train_loss": sum(finite_losses) / len(finite_losses) if finite_losses else None,
            "val_loss": final_val["val/loss"],
            "val_ppl": final_val["val/ppl"],
            "spike_score": spikes,
            "divergence_events": sum(1 for x in losses if x is None),
            "nonfinite_skips": state.nonfinite_skips,
            "spike_skips": state.spike_skips,
            **throughput,
            **facts,
        }
        return finite_or_none(summary)


def _start_wandb(cfg: DictConfig, run_dir: Path):
    """W&B with every file inside the run folder and an explicit mode, so it never prompts."""
    wandb_dir = run_dir / "wandb"
    wandb_dir.mkdir(parents=True, exist_ok=True)
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        os.environ.setdefault(var, str(wandb_dir))
    import wandb

    return wandb.init(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=cfg.logger.group,
        name=run_dir.name,
        id=run_dir.name,
        resume="allow",
        mode=cfg.logger.mode,
        dir=str(wandb_dir),
        config=OmegaConf.to_container(cfg, resolve=True),
    )


class _ProgressBar:
    """A rich progress bar showing loss, tokens/s and ETA; silent when disabled."""

    def __init__(self, total: int, completed: int, *, enabled: bool, every: int, announce: bool = True):
        self.every, self.announce = max(1, every), announce
        self._progress = None
        if not enabled:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("step {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            transient=False,
        )
        self._task = self._progress.add_task("train", total=total, completed=completed, status="")
        self._progress.start()

    def advance(self, metrics: dict[str, Any]) -> None:
        if self._progress is None:
            return
        status = None
        if metrics["step"] % self.every == 0:
            loss = metrics.get("loss")
            loss_text = f"{loss:.3f}" if loss is not None else "nan"
            status = f"loss {loss_text}  gnorm {metrics.get('grad_norm') or float('nan'):.2f}  {metrics['tokens_per_s']:,.0f} tok/s"
        self._progress.update(self._task, advance=1, **({"status": status} if status else {}))

    @contextlib.contextmanager
    def note(self, message: str):
        """Name a long wait inside training (a checkpoint write): in the bar's status, or as status lines."""
        if self._progress is None:
            with status(message) if self.announce else contextlib.nullcontext():
                yield
            return
        previous = self._progress.tasks[0].fields["status"]
        self._progress.update(self._task, status=f"{message} …")
        try:
            yield
        finally:
            self._progress.update(self._task, status=previous)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
