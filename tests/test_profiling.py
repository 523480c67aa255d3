"""`train.profile_at=N`: steps N..N+2 of a run are profiled into <run>/profile/ (a gzipped Chrome trace
and the operators with the most self time); off by default."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from typer.testing import CliRunner

from adagc_repro.cli import app
from adagc_repro.metrics.profiling import PROFILED_STEPS, StepProfiler, phase_ms


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


def _operator(name, *, kernels=(), children=(), annotation=False):
    from torch.autograd.profiler_util import FunctionEvent

    event = FunctionEvent(id=0, name=name, thread=0, start_us=0, end_us=1, use_device="cuda",
                          is_user_annotation=annotation)
    for kernel, micros in kernels:
        event.append_kernel(kernel, 0, micros)
    for child in children:
        event.append_cpu_child(child)
        child.set_cpu_parent(event)
    return event


def test_gpu_phases_count_kernels_once_and_not_the_spans_of_annotated_ranges():
    # With the host a step ahead, an annotated range's span on the GPU timeline covers the forward and
    # backward that ran before its first kernel: 300 ms of span around 0.9 ms of optimizer kernels.
    adamw = _operator("aten::_fused_adamw_", kernels=[("multi_tensor_apply_kernel", 900.0)])
    step = _operator("Optimizer.step#AdamW.step", kernels=[("Optimizer.step#AdamW.step", 250_000.0)],
                     children=[adamw], annotation=True)
    optimizer = _operator("optimizer", kernels=[("optimizer", 300_000.0)], children=[step], annotation=True)
    scale = _operator("aten::mul_", kernels=[("vectorized_elementwise_kernel", 200.0), ("Memset (Device)", 100.0)])
    clip = _operator("clip", kernels=[("clip", 5_000.0)], children=[scale], annotation=True)
    matmul = _operator("aten::mm", kernels=[("nvjet_sm90_tst", 20_000.0)])
    profiler_step = _operator("ProfilerStep#1", kernels=[("ProfilerStep#1", 400_000.0)],
                              children=[optimizer, clip, matmul], annotation=True)
    events = [profiler_step, optimizer, step, adamw, clip, scale, matmul]
    phases = phase_ms(events, on_device=True)
    per_step = {"clip": 300.0, "optimizer": 900.0, "other": 20_000.0, "total": 21_200.0}
    assert phases == pytest.approx({name: micros / 1e3 / PROFILED_STEPS for name, micros in per_step.items()})
