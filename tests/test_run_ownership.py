"""A run's checkpoints belong to its run folder; DONE means every step is in metrics.jsonl; stopping
and resuming say so in one line."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import tiny_overrides
from typer.testing import CliRunner

from adagc_repro import launch
from adagc_repro.cli import app

runner = CliRunner()
SIGINT_STEPS = 16  # logged every 2 steps, the stop lands at step 4 or so: 12 steps to spare on a loaded machine


def _steps(run_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows if "loss" in row]


def _run_dir(results: Path) -> Path:
    (run_dir,) = (results / "runs").iterdir()
    return run_dir


def test_checkpoints_of_a_deleted_run_folder_are_not_resumed(tiny, tmp_path):
    args = ["run", *tiny("clip=global", "seed=0")]  # 4 steps, the last one checkpointed
    assert runner.invoke(app, args, catch_exceptions=False).exit_code == 0
    run_dir = _run_dir(tmp_path / "results")
    assert list((tmp_path / "ckpt" / run_dir.name).glob("step-*.pt")), "the first run left a final checkpoint"
    first_loss = json.loads((run_dir / "summary.json").read_text())["final_train_loss"]
    shutil.rmtree(run_dir)

    again = runner.invoke(app, args, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert "are not recorded by run folder" in again.output and "starting fresh" in again.output
    assert _steps(run_dir) == [1, 2, 3, 4]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["final_train_loss"] == first_loss  # trained afresh, the same 4 steps


def test_done_requires_every_step_in_metrics(tmp_path, monkeypatch):
    from adagc_repro.config import compose

    real = launch._train_frozen

    def train_then_lose_step_3(folder):
        summary = real(folder)
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        (folder / "metrics.jsonl").write_text("".join(line + "\n" for line in lines if '"step": 3,' not in line))
        return summary

    monkeypatch.setattr(launch, "_train_frozen", train_then_lose_step_3)
    outcome = launch.run_job(compose(tiny_overrides(tmp_path)), ["test"])
    run_dir = _run_dir(tmp_path / "results")
    assert outcome.status == "failed" and not (run_dir / "DONE").exists() and (run_dir / "FAILED").exists()
    assert outcome.detail == "metrics.jsonl lacks 1 of steps 1..4 (first missing: 3)"
    assert (run_dir / "error.txt").read_text().strip() == outcome.detail


def test_sigint_stops_with_a_notice_and_the_same_command_resumes(tmp_path):
    # a stop is seen at a logging boundary: every 2 steps, not the default 10, so it lands early
    args = ["run", *tiny_overrides(tmp_path, f"train.steps={SIGINT_STEPS}", "train.log_every=2", "clip=adagc",
                                   "clip.warmup_steps=3")]
    process = subprocess.Popen([sys.executable, "-m", "adagc_repro.cli", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    metrics = None
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        runs = list((tmp_path / "results" / "runs").glob("*/metrics.jsonl"))
        if runs and len(runs[0].read_text().splitlines()) >= 2:
            metrics = runs[0]
            break
        time.sleep(0.02)
    assert metrics is not None, "the run never logged a step"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    stopped = _steps(metrics.parent)[-1]
    assert stopped < SIGINT_STEPS and f"stopped at step {stopped}; run the same command to resume" in stderr
    assert not (metrics.parent / "DONE").exists() and not (metrics.parent / "FAILED").exists()

    # the same command, in this process: the stop above already took the path through a fresh interpreter
    resumed = runner.invoke(app, args, catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming from step {stopped}" in resumed.output
    assert _steps(metrics.parent) == list(range(1, SIGINT_STEPS + 1)) and (metrics.parent / "DONE").exists()
