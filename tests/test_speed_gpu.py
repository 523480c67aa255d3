"""On CUDA: the compiled clipping path (Inductor, combo kernels) matches the eager one without host
syncs; the fused optimizer skips a step on the device; step times from events match the wall clock;
a compiled run reports steady-state throughput that agrees with its wall clock."""

from __future__ import annotations

import copy
import json
import math
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from test_clipping_fused import STEPS, _trajectory, assert_same
from test_clipping_helpers import CONFIGS, build
from typer.testing import CliRunner

from adagc_repro.cli import app
from adagc_repro.metrics.timing import StepTimer
from adagc_repro.optim.stepping import step_unless

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_compiled_clipper_matches_eager_on_cuda(name):
    eager, compiled = build(name), build(name).compile()
    assert_same(_trajectory(compiled, "cuda"), _trajectory(eager, "cuda"), compiled, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["adagc", "global", "zclip", "aggc"])
def test_compiled_clipper_makes_no_host_sync_once_compiled(name):
    named = [(f"layers.{i}.q_proj.weight", torch.nn.Parameter(torch.randn(64, 64, device="cuda"))) for i in range(8)]
    clipper = build(name).compile()
    loss = torch.tensor(2.0, device="cuda")
    for step in range(STEPS):
        for _, p in named:
            p.grad = torch.randn_like(p) * (1 + step)
        if step >= 2:
            torch.cuda.set_sync_debug_mode("error")
        try:
            clipper(named, loss=loss)
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("name", ["adagc", "global", "zclip", "skip_step"])
def test_folded_adamw_compiled_by_inductor_matches_clipping_then_fused_adamw(name):
    from test_folded_adamw import NONFINITE_STEP, _assert_same_optimizer, _trajectories

    want, got, skips, min_coefs = _trajectories(name, backend="inductor", device="cuda")
    assert skips[NONFINITE_STEP] and min(min_coefs) < 0.999
    _assert_same_optimizer(got, want, rtol=1e-5, atol=1e-6)


def test_folded_adamw_makes_no_host_sync_once_compiled():
    from adagc_repro.optim.folded_adamw import FoldedAdamW

    named = [(f"layers.{i}.q_proj.weight", torch.nn.Parameter(torch.randn(64, 64, device="cuda"))) for i in range(8)]
    optimizer = torch.optim.AdamW([p for _, p in named], lr=1e-3, fused=True)
    clipper, folded = build("adagc").compile(), FoldedAdamW(optimizer, named)
    for step in range(STEPS):
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * (1 - step / STEPS)
        for _, p in named:
            p.grad = torch.randn_like(p) * (1 + step)
        if step >= 2:
            torch.cuda.set_sync_debug_mode("error")
        try:
            stats = clipper(named, scale=False)
            folded.step(stats.names, stats.coefs, stats.skipped)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_fused_adamw_skips_on_the_device_without_a_sync():
    model = torch.nn.Linear(32, 32, device="cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    model(torch.randn(4, 32, device="cuda")).sum().backward()
    step_unless(optimizer, torch.tensor(False, device="cuda"))
    before = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
    for p in model.parameters():
        p.grad = torch.full_like(p, math.nan)
    skip = torch.tensor(True, device="cuda")  # made before the check: a copy from pageable memory syncs
    torch.cuda.set_sync_debug_mode("error")
    try:
        step_unless(optimizer, skip)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    after = (model.state_dict(), optimizer.state_dict())
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    for index, state in before[1]["state"].items():
        assert all(torch.equal(value, after[1]["state"][index][key]) for key, value in state.items())


def test_event_step_times_add_up_to_the_wall_clock():
    a = torch.randn(4096, 4096, device="cuda")
    timer = StepTimer("cuda", total_steps=20)
    torch.cuda.synchronize()
    begin = time.perf_counter()
    for _ in range(20):
        timer.start()
        for _ in range(5):
            a = torch.tanh(a @ a)
        timer.stop()
    seconds = timer.flush()
    wall = time.perf_counter() - begin
    assert len(seconds) == 20 and sum(seconds) == pytest.approx(wall, rel=0.1)
    assert timer.steady_wall_s == pytest.approx(sum(seconds[timer.warmup:]), rel=0.1)


def test_host_ahead_timing_counts_the_gpu_work_and_not_the_launches():
    from adagc_repro.clipping.bench import median_call_ms

    device = torch.device("cuda")
    small = [torch.ones(64, device=device) for _ in range(30)]
    big = torch.randn(8192, 8192, device=device)

    def launch_bound():  # 30 tiny kernels, 0.1 ms of host work before each: host time far above GPU time
        for t in small:
            time.sleep(1e-4)
            t.mul_(1.0)

    def gpu_bound():
        big.mul_(1.0)

    call, device_ms = (median_call_ms(launch_bound, device, 10, 2, host_ahead=ahead) for ahead in (False, True))
    assert device_ms < 0.2 * call  # the host's time no longer counts
    heavy_call, heavy_device = (median_call_ms(gpu_bound, device, 10, 2, host_ahead=ahead) for ahead in (False, True))
    assert heavy_device == pytest.approx(heavy_call, rel=0.2)  # GPU-bound work: the same either way
    assert median_call_ms(lambda: big.sum().item(), device, 5, 1, host_ahead=True) is None  # a host sync

    def many_launches():  # 400 kernels a call: 20 calls behind one sleep would overflow the launch queue
        for _ in range(400):
            small[0].mul_(1.0)

    assert median_call_ms(many_launches, device, 20, 2, host_ahead=True) is not None


def test_compiled_run_reports_steady_throughput_that_matches_its_wall_clock(tiny, tmp_path):
    overrides = tiny("train.device=cuda", "train.steps=60", "train.batch_size=8", "train.seq_len=256",
                     "train.log_every=20", "clip=adagc")
    result = CliRunner().invoke(app, ["run", *overrides], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "results" / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert [row["step"] for row in rows] == list(range(1, 61))
    assert summary["compile_s"] > 1.0  # train.compile=auto compiled the model on CUDA
    assert rows[0]["step_s"] > 10 * summary["step_s"]
    assert summary["mfu"] == pytest.approx(100 * summary["tokens_per_s"] * summary["flops_per_token"] / summary["peak_flops"])
    assert summary["tokens_per_s_wall"] == pytest.approx(summary["tokens_per_s"], rel=0.25)


def test_profiled_compiled_run_splits_a_steps_kernel_time_into_clipping_optimizer_and_the_rest(tiny, tmp_path):
    overrides = tiny("train.device=cuda", "train.steps=30", "train.batch_size=8", "train.seq_len=256",
                     "train.profile_at=20", "clip=adagc")
    result = CliRunner().invoke(app, ["run", *overrides], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "results" / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    phases = summary["profile_phases_ms"]
    assert all(phases[name] > 0 for name in ("clip", "optimizer", "other"))
    assert phases["total"] == pytest.approx(phases["clip"] + phases["optimizer"] + phases["other"], rel=1e-6)
    assert phases["other"] > max(phases["clip"], phases["optimizer"])  # forward and backward (its own thread) counted
    assert phases["total"] <= 1.05 * summary["step_s"] * 1e3  # kernel time fits in the step's span
    assert "GPU kernel time per step" in (run_dir / "profile" / "operators.txt").read_text()


def test_gpu_phase_times_are_the_kernels_launched_in_them_also_when_the_host_is_ahead():
    from adagc_repro.metrics.profiling import PHASES, PROFILED_STEPS, phase, phase_ms

    tensors = [torch.ones(1 << 20, device="cuda") for _ in range(8)]
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as capture:
        for _ in range(PROFILED_STEPS):
            with torch.profiler.record_function("passes"):  # annotated, as Inductor's compiled graphs are
                torch.cuda._sleep(40_000_000)  # ~20 ms of GPU work the host has already run past, as a 1B backward
            with phase("optimizer"):
                torch._foreach_mul_(tensors, 0.5)
            with phase("clip"):
                tensors[0].mul_(2.0)
        torch.cuda.synchronize()
    phases = phase_ms(capture.events(), on_device=True)
    kernels = [e for e in capture.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and e.name not in {*PHASES, "passes"}]  # the device's record less the ranges' spans, not the tree
    kernel_ms = sum(e.device_time_total for e in kernels) / 1e3 / PROFILED_STEPS
    assert phases["total"] == pytest.approx(kernel_ms, rel=0.02)
    assert phases["other"] > 5.0  # the sleep
    assert 0 < phases["optimizer"] < 1.0 and 0 < phases["clip"] < 0.5  # eight and one 4 MB scalings


def test_inductor_compiled_llama_on_cuda_runs_causal_sdpa_without_a_mask_and_matches_eager(monkeypatch):
    import transformers.integrations.sdpa_attention as sdpa_module
    from test_attention import SMALL

    from adagc_repro.models import build_model, forward_loss

    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        calls.append((attn_mask is None, is_causal))
        return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(sdpa_module.torch.nn.functional, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    model = build_model({**SMALL["llama"], "hidden_size": 256, "num_attention_heads": 4}, device="cuda")
    batch = {"input_ids": torch.randint(0, 128, (4, 64), device="cuda")}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = forward_loss(model, batch)[0]
        compiled = forward_loss(torch.compile(model), batch)[0]  # Inductor, as the training loop compiles
    assert calls and set(calls) == {(True, True)}  # traced and eager calls alike: no mask, causal kernel path
    assert compiled.item() == pytest.approx(eager.item(), rel=1e-2)


def _synchronizing_calls(folder, steps: int) -> list[str]:
    """Where (file:line) a compiled AdaGC run of `steps` steps (reading back every 40) made CUDA synchronising calls."""
    import warnings

    from conftest import tiny_overrides

    from adagc_repro.config import compose
    from adagc_repro.train import train

    cfg = compose(tiny_overrides(folder, "train.device=cuda", f"train.steps={steps}",
                                 "train.batch_size=8", "train.seq_len=128", "train.log_every=40",
                                 "train.telemetry_every=0", "clip=adagc"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train(cfg, folder / "run")
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchronizing" in str(w.message)]


def test_training_steps_make_no_host_sync_between_logging_boundaries(tmp_path):
    _synchronizing_calls(tmp_path / "compile", 40)  # compilation's own syncs stay out of the comparison
    # 40 more steps add one logging boundary; a sync per step would add at least 40 synchronising calls.
    long, short = _synchronizing_calls(tmp_path / "long", 80), _synchronizing_calls(tmp_path / "short", 40)
    assert len(long) - len(short) < 20, Counter(long) - Counter(short)  # where the extra syncs come from
