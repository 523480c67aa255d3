"""`train.profile_at=N`: steps N..N+2 of a run are profiled into <run>/profile/ (a gzipped Chrome trace
and the operators with the most self time); off by default."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from typer.testing import CliRunner

from adagc_repro.cli import app
from adagc_repro.metrics.profiling import StepProfiler


def _run_dir(tmp_path):
    (run_dir,) = (tmp_path / "results" / "runs").iterdir()
    return run_dir


def test_profile_at_writes_a_trace_and_an_operator_table_of_three_steps(tiny, tmp_path):
    result = CliRunner().invoke(app, ["run", *tiny("train.steps=5", "train.profile_at=2")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    profile = _run_dir(tmp_path) / "profile"
    table = (profile / "operators.txt").read_text()
    assert table.startswith("steps 2-4\nhost time of the operators per step, ms")
    phases = {line.split()[0]: float(line.split()[1]) for line in table.splitlines()[2:6]}
    assert list(phases) == ["clip", "optimizer", "other", "total"] and all(ms > 0 for ms in phases.values())
    assert phases["other"] > phases["clip"]  # per step, the model's passes outweigh the clipping
    assert phases["total"] == pytest.approx(phases["clip"] + phases["optimizer"] + phases["other"], abs=2e-3)
    summary = json.loads((_run_dir(tmp_path) / "summary.json").read_text())
    assert summary["profile_phases_ms"] == pytest.approx(phases, abs=1e-3)  # the same times, in the summary
    assert "sorted by self_cpu_time_total" in table and "aten::mm" in table  # the model's matmuls were captured
    events = json.loads(gzip.decompress((profile / "trace.json.gz").read_bytes()))["traceEvents"]
    steps_of_optimizer = [e for e in events if e.get("name", "").startswith("Optimizer.step#")]
    assert len(steps_of_optimizer) == 3  # exactly the three profiled steps, each with its optimizer step


def test_no_profile_by_default(tiny, tmp_path):
    result = CliRunner().invoke(app, ["run", *tiny()], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert not (_run_dir(tmp_path) / "profile").exists()
    assert json.loads((_run_dir(tmp_path) / "summary.json").read_text())["profile_phases_ms"] is None


def test_profiler_pauses_the_wall_clock_once_before_stopping_its_capture(tmp_path, monkeypatch):
    calls = []
    profiler = StepProfiler(tmp_path, 2, pause=lambda: calls.append("pause"))
    monkeypatch.setattr(StepProfiler, "_write", lambda self, capture: calls.append("write"))
    for step in range(1, 7):
        profiler.before(step)
        torch.ones(4).sum()
        profiler.after(step)
        calls.append(step)
    assert calls == [1, 2, 3, "pause", "write", 4, 5, 6]  # the export after the pause, at the last profiled step
