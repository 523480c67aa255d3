"""torchrun runs on 2 gloo processes (CPU, fp32): DDP and FSDP2 train the default model to the
single-process losses; SIGKILL of one rank, then the same command, resumes from the distributed
checkpoint (written asynchronously, the default) to the same losses."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import tiny_overrides
from typer.testing import CliRunner

from adagc_repro.cli import app

STEPS = 8
TOLERANCE = 1e-4


def _args(folder: Path, *extra: str) -> list[str]:
    return ["run", *tiny_overrides(folder, f"train.steps={STEPS}", "clip=adagc", "clip.warmup_steps=2", *extra)]


def _rows(results: Path) -> list[dict]:
    (run_dir,) = (results / "runs").iterdir()
    return [row for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in row]


def _losses(results: Path) -> list[float]:
    return [row["loss"] for row in _rows(results)]


def _run(folder: Path, *extra: str) -> None:
    """The command, in this process: torchrun still starts the workers (and with them every collective
    and checkpoint tested here); the parent's own interpreter start-up would only add seconds. Workers
    inherit this process's stdout and stderr (capfd reads them)."""
    done = CliRunner().invoke(app, _args(folder, *extra), catch_exceptions=False)
    errors = "".join(path.read_text() for path in (folder / "results" / "runs").glob("*/error.txt"))
    assert done.exit_code == 0, done.output + errors


@contextlib.contextmanager
def _alongside(folder: Path, *extra: str):
    """The command in a process of its own while the block runs; it must have succeeded at the end."""
    with open(folder / "output", "w") as output:
        process = subprocess.Popen([sys.executable, "-m", "adagc_repro.cli", *_args(folder, *extra)], stdout=output,
                                   stderr=subprocess.STDOUT)
    try:
        yield
        returncode = process.wait(timeout=300)
    finally:
        if process.poll() is None:  # the block failed: a stop signal makes the run stop its torchrun too
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
    assert returncode == 0, (folder / "output").read_text()[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prepared_data) -> dict[str, Path]:
    """The single-process, FSDP2 and DDP runs. The DDP run trains in a process of its own while the
    other two train: one torchrun run alone leaves a core idle a third of the time (start-up,
    rendezvous, shutdown), and the runs do not depend on each other."""
    folders = {name: tmp_path_factory.mktemp(name) for name in ("single", "fsdp2", "ddp")}
    with _alongside(folders["ddp"], "parallel=ddp", "parallel.nproc_per_node=2"):
        _run(folders["single"])
        _run(folders["fsdp2"], "parallel=fsdp2", "parallel.nproc_per_node=2")
    return folders


@pytest.fixture(scope="module")
def single(runs) -> list[float]:
    return _losses(runs["single"] / "results")


@pytest.fixture(scope="module")
def fsdp2(runs) -> Path:
    return runs["fsdp2"]


def _assert_close(got: list[float], expected: list[float]) -> None:
    assert len(got) == len(expected) == STEPS
    worst = max(abs(a - b) for a, b in zip(got, expected, strict=True))
    assert worst <= TOLERANCE, (worst, got, expected)


def test_ddp_matches_the_single_process_run(single, runs):
    ddp = runs["ddp"]
    (run_dir,) = (ddp / "results" / "runs").iterdir()
    assert (run_dir / "DONE").exists()
    assert json.loads((run_dir / "summary.json").read_text())["world_size"] == 2
    _assert_close(_losses(ddp / "results"), single)
    assert {row["clip/collectives"] for row in _rows(ddp / "results")} == {0}  # replicated gradients


def test_fsdp2_matches_the_single_process_run_with_one_collective_per_clip(single, fsdp2):
    (run_dir,) = (fsdp2 / "results" / "runs").iterdir()
    assert (run_dir / "DONE").exists()
    assert json.loads((run_dir / "summary.json").read_text())["world_size"] == 2
    _assert_close(_losses(fsdp2 / "results"), single)
    rows = _rows(fsdp2 / "results")
    assert {row["clip/collectives"] for row in rows} == {1}
    assert {row["clip/comm_bytes"] for row in rows} == {4 * 39}  # one fp32 squared norm per tensor


def _worker(parent: psutil.Process, rank: int):
    for child in parent.children(recursive=True):
        try:
            if "adagc_repro.worker" in " ".join(child.cmdline()) and child.environ().get("RANK") == str(rank):
                return child
        except psutil.Error:
            continue
    return None


def _kill_rank_after_a_checkpoint(results: Path, rank: int, finished: threading.Event, killed: list[int]) -> None:
    """SIGKILL worker `rank` of this process's torchrun once the run has recorded a checkpoint."""
    deadline = time.time() + 240
    while time.time() < deadline and not finished.is_set():
        if list(results.glob("runs/*/checkpoint.json")):
            victim = _worker(psutil.Process(), rank)
            if victim is not None:
                victim.send_signal(signal.SIGKILL)
                killed.append(victim.pid)
                return
        time.sleep(0.02)


def test_sigkill_of_one_rank_then_the_same_command_resumes_to_the_same_losses(fsdp2, tmp_path, capfd):
    extra = ("parallel=fsdp2", "parallel.nproc_per_node=2", "train.checkpoint_every=2")
    # torchrun and its workers run as ever; the launching CLI in this process (a worker is killed, not it)
    finished, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_rank_after_a_checkpoint, daemon=True,
                              args=(tmp_path / "results", 1, finished, killed))
    killer.start()
    crashed = CliRunner().invoke(app, _args(tmp_path, *extra), catch_exceptions=False)
    finished.set()
    killer.join()
    assert killed, "no checkpoint was recorded before the run ended"
    assert crashed.exit_code == 1, crashed.output
    (run_dir,) = (tmp_path / "results" / "runs").iterdir()
    assert (run_dir / "FAILED").exists() and not (run_dir / "DONE").exists()
    recorded = json.loads((run_dir / "checkpoint.json").read_text())
    assert recorded["format"] == "dcp" and recorded["step"] < STEPS

    capfd.readouterr()
    _run(tmp_path, *extra)
    resumed = capfd.readouterr()
    assert f"resuming from step {recorded['step']}" in resumed.out + resumed.err
    if recorded["step"] < STEPS - 2:  # the resumed run wrote periodic checkpoints: in the background
        assert "s of it blocking training" in resumed.out + resumed.err
    assert (run_dir / "DONE").exists()
    expected = _losses(fsdp2 / "results")
    got = _losses(tmp_path / "results")
    assert len(got) == STEPS and max(abs(a - b) for a, b in zip(got, expected, strict=True)) <= 1e-6
