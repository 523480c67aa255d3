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


def _event(name, *, id=0, micros=1.0, device=False, annotation=False, children=()):
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEvent

    event = FunctionEvent(id=id, name=name, thread=0, start_us=0, end_us=micros, use_device="cuda",
                          device_type=DeviceType.CUDA if device else DeviceType.CPU, is_user_annotation=annotation)
    for child in children:
        event.append_cpu_child(child)
        child.set_cpu_parent(event)
    return event


def _flat(events):
    return [nested for event in events for nested in (event, *_flat(event.cpu_children))]


def test_gpu_phases_count_each_kernel_once_in_the_phase_that_launched_it():
    # As torch 2.11 records a compiled step on an H200 (host a step ahead): host ranges and operators,
    # runtime launches under them (cudaLaunchKernel, cuLaunchKernel: CUPTI correlation ids), the device
    # work with those ids, and each annotated range's span on the GPU timeline, which takes in the forward
    # and backward that ran before its first kernel. Operator ids are another counter and collide with
    # launch ids (here 11 and 13); a kernel launched straight from a range (12) has no operator of its own.
    events = [
        _event("optimizer", id=1, annotation=True, children=[
            _event("aten::_fused_adamw_", id=5, children=[_event("cudaLaunchKernel", id=11)]),
            _event("cudaLaunchKernel", id=12)]),
        _event("optimizer", id=1, micros=300_000.0, device=True, annotation=True),
        _event("multi_tensor_apply_kernel", id=11, micros=900.0, device=True),
        _event("memset_kernel", id=12, micros=40.0, device=True),
        _event("clip", id=2, annotation=True, children=[_event("Torch-Compiled Region: 0/0", id=6, children=[
            _event("triton_red_fused_0", id=7, children=[_event("cuLaunchKernel", id=13)]),
            _event("triton_poi_fused_mul_1", id=8, children=[_event("cuLaunchKernel", id=14)])])]),
        _event("clip", id=2, micros=5_000.0, device=True, annotation=True),
        _event("triton_red_fused_0", id=13, micros=200.0, device=True),
        _event("triton_poi_fused_mul_1", id=14, micros=100.0, device=True),
        _event("aten::mm", id=3, children=[_event("cudaLaunchKernel", id=15)]),  # forward
        _event("nvjet_sm90_tst", id=15, micros=20_000.0, device=True),
        _event("cudaLaunchKernel", id=16),  # the backward thread's launch: no range of the loop around it
        _event("nvjet_sm90_tst", id=16, micros=30_000.0, device=True),
        _event("Lazy Function Loading", id=11), _event("TorchDynamo Cache Lookup", id=13),
    ]
    phases = phase_ms(_flat(events), on_device=True)  # as profile.events(): every event, children too
    per_step = {"clip": 300.0, "optimizer": 940.0, "other": 50_000.0, "total": 51_240.0}
    assert phases == pytest.approx({name: micros / 1e3 / PROFILED_STEPS for name, micros in per_step.items()})
