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
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
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


def _training_worker(parent: psutil.Process, results: Path, running: Callable[[], bool]):
    """A worker process under `parent` training a run of `results`, and its run folder, once it has
    logged a step."""
    deadline = time.time() + 120
    while time.time() < deadline and running():
        for child in parent.children(recursive=True):
            try:
                command = child.cmdline()
            except psutil.Error:
                continue
            if command[-2:-1] == ["adagc_repro.worker"] and Path(command[-1]).parent.parent == results:
                if _steps(Path(command[-1])):
                    return child, Path(command[-1])
        time.sleep(0.02)
    raise AssertionError("no worker process of the sweep logged a step")


@dataclass
class Sweep:
    folder: Path  # results/ and, for a sweep in a process of its own, its stdout and stderr files
    exit_code: int
    caught: list[Path]  # the run folder of the job whose worker was caught training, once it was
    output: str


def _kill_first_worker(results: Path, finished: threading.Event, caught: list[Path]) -> None:
    worker, folder = _training_worker(psutil.Process(), results, running=lambda: not finished.is_set())
    worker.send_signal(signal.SIGKILL)
    caught.append(folder)


def _sweep_killing_its_first_worker(tmp_path: Path) -> Sweep:
    """The sweep in this process (what dies is a worker, not the sweep), a thread SIGKILLing its first
    worker to log a step."""
    finished, caught = threading.Event(), []
    killer = threading.Thread(target=_kill_first_worker, args=(tmp_path / "results", finished, caught), daemon=True)
    killer.start()
    try:
        result = CliRunner().invoke(app, _overrides(tmp_path), catch_exceptions=False)
    finally:
        finished.set()
        killer.join()
    return Sweep(tmp_path, result.exit_code, caught, result.output)


def _stop_first_job(sweep: subprocess.Popen, results: Path, caught: list[Path]) -> None:
    _, folder = _training_worker(psutil.Process(sweep.pid), results, running=lambda: sweep.poll() is None)
    sweep.send_signal(signal.SIGINT)
    caught.append(folder)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, prepared_data) -> dict[str, Sweep]:
    """Both sweeps at once: one killed here, one stopped in a process of its own (the signal goes to
    that process). While a worker trains, the process that runs its sweep only waits, so one at a time
    they leave a core idle; the sweeps share no run folder and the workers are told apart by it."""
    folder = tmp_path_factory.mktemp("stopped")
    process, caught = _start_sweep(folder), []
    stopper = threading.Thread(target=_stop_first_job, args=(process, folder / "results", caught), daemon=True)
    stopper.start()
    try:
        killed = _sweep_killing_its_first_worker(tmp_path_factory.mktemp("killed"))
        exit_code = process.wait(timeout=120)
    finally:
        if process.poll() is None:  # the other sweep failed: stop this one and its worker
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
        stopper.join()
    output = (folder / "stdout").read_text() + (folder / "stderr").read_text()
    return {"killed": killed, "stopped": Sweep(folder, exit_code, caught, output)}


def test_a_job_whose_process_dies_hard_is_failed_and_the_next_job_still_runs(sweeps):
    sweep = sweeps["killed"]
    assert sweep.caught, "no worker process of the sweep logged a step"
    (first,) = sweep.caught
    assert sweep.exit_code == 1, sweep.output
    assert len(_steps(first)) < LONG, "the first job finished before it was killed"
    assert (first / "FAILED").exists() and (first / "error.txt").read_text() == "the worker was killed by SIGKILL\n"
    (second,) = (run for run in first.parent.iterdir() if run != first)
    assert (second / "DONE").exists() and _steps(second) == [1, 2, 3, 4]
    summary = json.loads((second / "summary.json").read_text())  # the worker's summary reached the sweep
    assert summary["run_id"] == second.name and summary["steps"] == 4 and summary["final_train_loss"] > 0


def test_a_stop_signal_reaches_the_running_job_which_checkpoints_and_says_so(sweeps):
    sweep = sweeps["stopped"]
    assert sweep.caught, "no worker process of the sweep logged a step"
    (first,) = sweep.caught
    assert sweep.exit_code == 130, sweep.output
    stopped = _steps(first)[-1]
    assert stopped < LONG and not (first / "DONE").exists() and not (first / "FAILED").exists()
    assert json.loads((first / "checkpoint.json").read_text())["step"] == stopped  # what the same command resumes
    # the worker's own notice reaches the terminal the sweep was started from
    assert f"stopped at step {stopped}; run the same command to resume" in (sweep.folder / "stderr").read_text()
    # the stop ends the sweep: the next job does not start
    assert [run.name for run in (sweep.folder / "results" / "runs").iterdir()] == [first.name]
    assert "not started" in (sweep.folder / "stdout").read_text()
