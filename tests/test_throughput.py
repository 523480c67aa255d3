"""Peak FLOP/s lookup, MFU arithmetic, steady-state throughput, the step timer, and torch-free imports."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from adagc_repro.metrics import PEAK_FLOPS, mfu, peak_flops, steady_throughput
from adagc_repro.metrics.timing import StepTimer


@pytest.mark.parametrize(
    "device_name,expected",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),  # the name torch reports on an H200 SXM
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA B200", 2.25e15),
        ("NVIDIA GB200", 2.5e15),
        ("NVIDIA L40S", 362e12),
        ("AMD Instinct MI300X", 1.3e15),
        ("cpu", None),
        ("NVIDIA GeForce GTX 1080", None),
    ],
)
def test_peak_flops_by_device_name(device_name, expected):
    assert peak_flops(device_name, torch.bfloat16) == expected
    assert peak_flops(device_name, "bf16-mixed") == expected


def test_fp32_has_no_peak_and_table_is_ordered_specific_first():
    assert peak_flops("NVIDIA H200", torch.float32) is None
    assert peak_flops("NVIDIA H200", "fp32") is None
    assert peak_flops("NVIDIA H200", torch.float16) == 989e12
    names = [name for name, _ in PEAK_FLOPS]
    for i, name in enumerate(names):
        assert not any(name.lower() in later.lower() for later in names[i + 1 :]), name


def test_mfu_is_a_percent():
    # 134M model on an H200 (spec: 363k tokens/s, 37.9% MFU with ~1.03 GFLOP per token).
    assert mfu(363e3, 1.0326e9, 989e12) == pytest.approx(37.9, abs=0.05)
    assert mfu(1000.0, 6e6, None) is None
    assert mfu(None, 6e6, 989e12) is None


def test_steady_throughput_ignores_the_slow_first_steps():
    # A 60 s compile step, four 1.2 s warm-up steps, then ten 0.5 s steps (one slow outlier at 2 s).
    seconds = [60.0, 1.2, 1.2, 1.2, 1.2] + [0.5] * 9 + [2.0]
    result = steady_throughput(seconds, 1000, warmup=5, steady_wall_s=sum(seconds[5:]),
                               flops_per_token=6e6, peak=1e12)
    assert result["step_s"] == 0.5 and result["tokens_per_s"] == 2000.0
    assert result["mfu"] == pytest.approx(100.0 * 2000 * 6e6 / 1e12)
    assert result["compile_s"] == pytest.approx(60.0 + 4 * 1.2 - 5 * 0.5)
    assert result["train_s"] == pytest.approx(sum(seconds))
    assert result["tokens_per_s_wall"] == pytest.approx(10 * 1000 / 6.5)  # the outlier shows here, not in the median


def test_steady_throughput_of_a_short_run_keeps_one_step():
    assert steady_throughput([3.0], 10, warmup=5)["tokens_per_s"] == pytest.approx(10 / 3)
    assert steady_throughput([], 10, warmup=5)["tokens_per_s"] is None


def test_cpu_step_timer_reads_step_times_and_steady_wall_time():
    ticks = iter([0.0, 0.0, 5.0,    # step 1 opens the wall window at 0 and takes 5 s (compilation)
                  5.0, 6.0,         # step 2, the last warm-up step: the timer syncs, the window closes
                  7.0, 7.0, 7.5,    # step 3 opens a steady window at 7
                  7.5, 8.0,         # step 4
                  8.25])            # flush: the window closes at 8.25
    timer = StepTimer("cpu", total_steps=4, clock=lambda: next(ticks))
    assert timer.warmup == 2
    for _ in range(4):
        timer.start()
        timer.stop()
    assert timer.flush() == [5.0, 1.0, 0.5, 0.5]
    assert timer.steady_wall_s == pytest.approx(1.25)
    assert timer.flush() == []


def test_paused_step_timer_leaves_host_work_between_steps_out_of_the_wall_time():
    ticks = iter([0.0, 0.0, 5.0, 5.0, 6.0,   # steps 1-2: the warm-up
                  7.0, 7.0, 7.5,             # step 3 opens a steady window at 7
                  7.75,                      # pause: the window closes at 7.75; 12 s of export follow
                  20.0, 20.0, 20.5,          # step 4 reopens the window at 20
                  20.75])                    # flush: closes it at 20.75
    timer = StepTimer("cpu", total_steps=4, clock=lambda: next(ticks))
    for step in range(1, 5):
        timer.start()
        timer.stop()
        if step == 3:
            timer.pause()
            timer.pause()  # nothing stopped since: no second sync, no clock read
    assert timer.flush() == [5.0, 1.0, 0.5, 0.5]
    assert timer.steady_wall_s == pytest.approx(0.75 + 0.75)  # without the pause: 13.75


def test_light_modules_do_not_import_torch():
    code = (
        "import sys, adagc_repro.metrics, adagc_repro.eval, adagc_repro.eval.commands; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'lm_eval' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
