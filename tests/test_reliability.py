"""Crash safety: checkpoints, exact resume after SIGKILL, non-finite steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from typer.testing import CliRunner

from adagc_repro.checkpoint import Checkpointer
from adagc_repro.cli import app

runner = CliRunner()


def _losses(results: Path) -> list[float]:
    (run_dir,) = (results / "runs").iterdir()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


class _Counter:
    def __init__(self):
        self.value = torch.zeros(3)

    def state_dict(self):
        return {"value": self.value.clone()}

    def load_state_dict(self, state):
        self.value = state["value"].clone()


def test_checkpoints_are_verified_pruned_and_fall_back(tmp_path, caplog):
    checkpointer = Checkpointer(tmp_path, keep=2)
    counter = _Counter()
    for step in (1, 2, 3):
        counter.value += 1
        checkpointer.save(step, {"counter": counter}, note=f"step {step}")
    assert [p.name for p in checkpointer.candidates()] == ["step-00000003.pt", "step-00000002.pt"]
    latest = checkpointer.candidates()[0]
    latest.write_bytes(latest.read_bytes()[:-10])  # truncated by a crash
    fresh = _Counter()
    extra = checkpointer.load_latest({"counter": fresh})
    assert extra["step"] == 2 and extra["note"] == "step 2"
    assert fresh.value.tolist() == [2.0, 2.0, 2.0]
    assert "unusable" in caplog.text


def test_checkpoint_without_integrity_record_is_ignored(tmp_path):
    checkpointer = Checkpointer(tmp_path, keep=3)
    checkpointer.save(1, {"counter": _Counter()})
    checkpointer.candidates()[0].with_suffix(".json").unlink()
    assert checkpointer.load_latest({"counter": _Counter()}) is None


def _kill_once_recorded(process: subprocess.Popen, results: Path) -> None:
    """SIGKILL the run once its run folder records a checkpoint: the record, not the checkpoint file,
    since a run killed between the two rightly starts fresh."""
    deadline = time.time() + 120
    while not list(results.glob("runs/*/checkpoint.json")) and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)


def test_resume_after_sigkill_is_bit_identical(tmp_path, prepared_data):
    common = ["train.steps=12", "train.batch_size=2", "train.seq_len=64", "train.val_every=0", "train.val_batches=1",
              "train.checkpoint_every=2", "train.progress=false", "clip=adagc", "clip.warmup_steps=5"]
    crashed = tmp_path / "crashed"
    args = ["run", *common, f"paths.results={crashed}", f"paths.checkpoints={tmp_path / 'ckpt-b'}"]
    process = subprocess.Popen([sys.executable, "-m", "adagc_repro.cli", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    killer = threading.Thread(target=_kill_once_recorded, args=(process, crashed), daemon=True)
    killer.start()  # while the run to be killed starts up, the uninterrupted one trains in this process
    straight = tmp_path / "straight"
    done = runner.invoke(app, ["run", *common, f"paths.results={straight}", f"paths.checkpoints={tmp_path / 'ckpt-a'}"],
                         catch_exceptions=False)
    assert done.exit_code == 0, done.output
    killer.join()
    process.wait()
    (run_dir,) = (crashed / "runs").iterdir()
    assert not (run_dir / "DONE").exists(), "the run finished before it could be killed"
    recorded = json.loads((run_dir / "checkpoint.json").read_text())["step"]

    # the same command resumes; in this process, as the straight run, to skip another interpreter start-up
    resumed = runner.invoke(app, args, catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming from step {recorded}" in resumed.output  # a fresh start gives the same losses
    assert (run_dir / "DONE").exists()
    assert _losses(crashed) == _losses(straight)
    assert len(_losses(crashed)) == 12


def _nan_on_steps(monkeypatch, bad_calls):
    import adagc_repro.models as models

    real = models.forward_loss
    calls = {"n": 0}

    def forward_loss(model, batch):
        calls["n"] += 1
        loss, extras = real(model, batch)
        return (loss * float("nan") if calls["n"] in bad_calls else loss), extras

    monkeypatch.setattr(models, "forward_loss", forward_loss)


def test_nonfinite_steps_are_skipped_and_counted(tiny, tmp_path, monkeypatch):
    _nan_on_steps(monkeypatch, bad_calls={2, 3})
    result = runner.invoke(app, ["run", *tiny("train.steps=5", "clip=adagc")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "results" / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["nonfinite_skips"] == 2 and summary["divergence_events"] == 2
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert [row["skipped"] for row in rows] == [None, "nonfinite", "nonfinite", None, None]
    assert rows[1]["loss"] is None and rows[3]["loss"] is not None


def test_too_many_nonfinite_steps_fail_the_run_naming_the_step(tiny, tmp_path, monkeypatch):
    _nan_on_steps(monkeypatch, bad_calls=set(range(1, 100)))
    result = runner.invoke(app, ["run", *tiny("train.steps=6", "train.max_nonfinite_skips=3")])
    assert result.exit_code == 1
    (run_dir,) = (tmp_path / "results" / "runs").iterdir()
    assert (run_dir / "FAILED").exists()
    assert "step 3: 3 consecutive steps" in (run_dir / "error.txt").read_text()


def test_a_run_held_by_another_process_is_not_trained_twice(tmp_path):
    from conftest import tiny_overrides

    from adagc_repro import launch, runs
    from adagc_repro.config import compose

    cfg = compose(tiny_overrides(tmp_path))
    folder = runs.run_dir(tmp_path / "results", launch.config_lib.run_id(cfg))
    with runs.run_lock(folder) as owned:
        assert owned
        assert runs.status_of(folder) == "running"
        outcome = launch.run_job(cfg, ["test"])
    assert outcome.status == "busy"
    assert not (folder / "metrics.jsonl").exists()
    assert runs.status_of(folder) == "partial"


def test_model_only_final_save_exports_bf16_weights_equal_to_the_trained_ones(tiny, tmp_path):
    from safetensors.torch import load_file

    result = runner.invoke(app, ["run", *tiny("train.final_checkpoint=false", "train.export_dtype=bfloat16")],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "results" / "runs").iterdir()
    assert (run_dir / "DONE").exists() and not (run_dir / "checkpoint.json").exists()
    (run_ckpt,) = (tmp_path / "ckpt").iterdir()
    assert not list(run_ckpt.glob("step-*"))  # no resumable checkpoint at the last step
    weights = load_file(str(run_ckpt / "final_model" / "model.safetensors"))
    assert {tensor.dtype for tensor in weights.values()} == {torch.bfloat16}

    # the same run exporting float32 holds the same weights, of which the bf16 ones are the rounding
    full = runner.invoke(app, ["run", *tiny(f"paths.results={tmp_path / 'fp32'}", f"paths.checkpoints={tmp_path / 'fp32ck'}")],
                         catch_exceptions=False)
    assert full.exit_code == 0, full.output
    (fp32_ckpt,) = (tmp_path / "fp32ck").iterdir()
    assert list(fp32_ckpt.glob("step-*.pt"))  # the default keeps the final resumable checkpoint
    reference = load_file(str(fp32_ckpt / "final_model" / "model.safetensors"))
    assert reference.keys() == weights.keys()
    for key, value in reference.items():
        assert value.dtype == torch.float32 and torch.equal(value.to(torch.bfloat16), weights[key]), key
