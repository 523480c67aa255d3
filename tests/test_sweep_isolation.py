"""Each job of a sweep (`run -m`, parallel=none) trains in a worker process of its own: a job whose
process dies hard is FAILED and the next job still runs; a stop signal reaches the running job, which
checkpoints and says so on the terminal, and ends the sweep."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from conftest import tiny_overrides
from typer.testing import CliRunner

from adagc_repro.cli import app

LONG = 30  # steps of the first job: long enough to be caught mid-run


def _overrides(tmp_path: Path) -> list[str]:
    """A two-job sweep: LONG steps, then 4. Steps are logged, and a stop acted on, every 2 steps (not
    10): the first job is caught at step 2 and stopped by step 4 of LONG."""
    overrides = [o for o in tiny_overrides(tmp_path) if not o.startswith("train.steps=")]
    return ["run", "-m", *overrides, f"train.steps={LONG},4", "train.log_every=2"]


def _start_sweep(tmp_path: Path) -> subprocess.Popen:
    """The sweep in a process of its own, its output in tmp_path/stdout and tmp_path/stderr."""
    with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w") as err:
        return subprocess.Popen([sys.executable, "-m", "adagc_repro.cli", *_overrides(tmp_path)], stdout=out,
                                stderr=err)


def _steps(folder: Path) -> list[int]:
    path = folder / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [row["step"] for row in map(json.loads, lines) if "loss" in row]


def _training_worker(parent: psutil.Process, running: Callable[[], bool]):
    """A worker process under `parent` (the sweep's process) and its run folder, once it has logged a step."""
    deadline = time.time() + 120
    while time.time() < deadline and running():
        for child in parent.children(recursive=True):
            try:
                command = child.cmdline()
            except psutil.Error:
                continue
            if command[-2:-1] == ["adagc_repro.worker"] and _steps(Path(command[-1])):
                return child, Path(command[-1])
        time.sleep(0.02)
    raise AssertionError("no worker process of the sweep logged a step")


def _other_run(tmp_path: Path, folder: Path) -> Path:
    (other,) = (run for run in (tmp_path / "results" / "runs").iterdir() if run != folder)
    return other


def _kill_first_worker(finished: threading.Event, killed: list[Path]) -> None:
    worker, folder = _training_worker(psutil.Process(), running=lambda: not finished.is_set())
    worker.send_signal(signal.SIGKILL)
    killed.append(folder)


def test_a_job_whose_process_dies_hard_is_failed_and_the_next_job_still_runs(tmp_path):
    # The sweep runs in this process (what dies is a worker, not the sweep): no interpreter start-up.
    finished, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first_worker, args=(finished, killed), daemon=True)
    killer.start()
    result = CliRunner().invoke(app, _overrides(tmp_path), catch_exceptions=False)
    finished.set()
    killer.join()
    assert killed, "no worker process of the sweep logged a step"
    (first,) = killed
    assert result.exit_code == 1, result.output
    assert len(_steps(first)) < LONG, "the first job finished before it was killed"
    assert (first / "FAILED").exists() and (first / "error.txt").read_text() == "the worker was killed by SIGKILL\n"
    second = _other_run(tmp_path, first)
    assert (second / "DONE").exists() and _steps(second) == [1, 2, 3, 4]
    summary = json.loads((second / "summary.json").read_text())  # the worker's summary reached the sweep
    assert summary["run_id"] == second.name and summary["steps"] == 4 and summary["final_train_loss"] > 0


def test_a_stop_signal_reaches_the_running_job_which_checkpoints_and_says_so(tmp_path):
    sweep = _start_sweep(tmp_path)
    _, first = _training_worker(psutil.Process(sweep.pid), running=lambda: sweep.poll() is None)
    sweep.send_signal(signal.SIGINT)
    assert sweep.wait(timeout=120) == 130
    stopped = _steps(first)[-1]
    assert stopped < LONG and not (first / "DONE").exists() and not (first / "FAILED").exists()
    assert json.loads((first / "checkpoint.json").read_text())["step"] == stopped  # what the same command resumes
    # the worker's own notice reaches the terminal the sweep was started from
    assert f"stopped at step {stopped}; run the same command to resume" in (tmp_path / "stderr").read_text()
    # the stop ends the sweep: the next job does not start
    assert [run.name for run in (tmp_path / "results" / "runs").iterdir()] == [first.name]
    assert "not started" in (tmp_path / "stdout").read_text()
