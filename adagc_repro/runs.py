"""The results folder: content-addressed run folders with DONE/FAILED markers, and sweep manifests.

    results/runs/<run_id>/{config.yaml, metrics.jsonl, summary.json, eval.json, provenance.json,
                           DONE | FAILED + error.txt}
    results/sweeps/<sweep_id>/manifest.json

Nothing here imports torch: `status` and `tables` read these files only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adagc_repro.atomic import write_json, write_text

DONE, FAILED, ERROR, LOCK = "DONE", "FAILED", "error.txt", ".lock"


def runs_root(results: Path) -> Path:
    return Path(results) / "runs"


def run_dir(results: Path, run_id: str) -> Path:
    return runs_root(results) / run_id


def status_of(folder: Path) -> str:
    """done | failed | running | partial (started, not finished, nobody on it) | missing."""
    if (folder / DONE).exists():
        return "done"
    if not folder.exists():
        return "missing"
    if _locked(folder):
        return "running"
    if (folder / FAILED).exists():
        return "failed"
    return "partial"


def mark_done(folder: Path, summary: dict[str, Any]) -> None:
    write_json(folder / "summary.json", summary)
    (folder / FAILED).unlink(missing_ok=True)
    (folder / ERROR).unlink(missing_ok=True)
    write_text(folder / DONE, time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")


def mark_failed(folder: Path, error_text: str) -> None:
    write_text(folder / ERROR, error_text)
    write_text(folder / FAILED, time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")


def read_json(path: Path) -> Any:
    """A results file's JSON; a damaged one is a one-line error naming the file."""
    from adagc_repro.errors import ConfigError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(str(path), f"not valid JSON ({exc}); delete or restore the file") from None


def first_error_line(folder: Path) -> str:
    path = folder / ERROR
    if not path.exists():
        return ""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


@contextlib.contextmanager
def run_lock(folder: Path):
    """Exclusive, non-blocking ownership of a run folder; yields False if another process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _locked(folder: Path) -> bool:
    lock = folder / LOCK
    if not lock.exists():
        return False
    with open(lock) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


@dataclass
class RunRow:
    run_id: str
    status: str
    model: str = ""
    clip: str = ""
    optim: str = ""
    seed: Any = ""
    step: int = 0
    steps: Any = ""
    error: str = ""


def describe_run(folder: Path, cfg=None) -> RunRow:
    """One status row from the run's files (config.yaml, metrics.jsonl, summary.json, error.txt).

    `cfg`, the composed config of a planned run, fills the row of a run that has no folder yet.
    """
    from omegaconf import OmegaConf

    row = RunRow(run_id=folder.name, status=status_of(folder))
    config = folder / "config.yaml"
    cfg = OmegaConf.load(config) if config.exists() else cfg
    if cfg is not None:
        row.model, row.clip, row.optim = cfg.model.name, cfg.clip.name, cfg.optim.name
        row.seed, row.steps = cfg.seed, cfg.train.steps
    metrics = folder / "metrics.jsonl"
    row.step = _last_step(metrics)
    if row.status == "done" and not metrics.exists():
        row.status, row.step = "damaged", _summary_steps(folder)
        row.error = "DONE but metrics.jsonl is missing (curves and tables need it); force=true retrains the run"
    elif row.status == "failed":
        row.error = first_error_line(folder)
    return row


def _summary_steps(folder: Path) -> int:
    with contextlib.suppress(OSError, ValueError):  # ConfigError is a ValueError
        return int(read_json(folder / "summary.json").get("steps") or 0)
    return 0


def missing_steps(folder: Path, steps: int) -> list[int]:
    """Steps of 1..steps with no training line (a `loss` key) in the run's metrics.jsonl."""
    seen: set[int] = set()
    path = folder / "metrics.jsonl"
    if path.exists():
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    row = json.loads(line)
                    if "loss" in row and not row.get("final"):
                        seen.add(int(row["step"]))
    return [step for step in range(1, steps + 1) if step not in seen]


def _last_step(path: Path) -> int:
    if not path.exists():
        return 0
    last = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            with contextlib.suppress(ValueError):
                last = max(last, int(json.loads(line).get("step", 0)))
    return last


def all_runs(results: Path) -> list[Path]:
    root = runs_root(results)
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.exists() else []


def sweep_id(run_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(run_ids)).encode()).hexdigest()[:10]


def write_sweep_manifest(results: Path, *, command: list[str], overrides: list[str], experiment: str | None,
                         jobs: list[tuple[str, list[str]]]) -> str:
    """A sweep is named by the set of its runs, so re-running the same sweep reuses its manifest."""
    identifier = sweep_id([run for run, _ in jobs])
    write_json(
        Path(results) / "sweeps" / identifier / "manifest.json",
        {
            "sweep_id": identifier,
            "command": command,
            "overrides": overrides,
            "experiment": experiment,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "runs": [{"run_id": run, "overrides": job_overrides} for run, job_overrides in jobs],
        },
    )
    return identifier


def read_manifest(results: Path, identifier: str) -> dict[str, Any]:
    from adagc_repro.errors import ConfigError

    path = Path(results) / "sweeps" / identifier / "manifest.json"
    if not path.exists():
        known = sorted(p.parent.name for p in (Path(results) / "sweeps").glob("*/manifest.json"))
        raise ConfigError("--sweep", f"no sweep '{identifier}' under {results}", known or None)
    return read_json(path)
