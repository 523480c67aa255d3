"""Peak FLOP/s lookup, MFU arithmetic, the step timer, and torch-free imports of the light modules."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from adagc_repro.metrics import PEAK_FLOPS, StepTimer, mfu, peak_flops


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


def test_step_timer_laps():
    ticks = iter([10.0, 10.5, 12.5])
    timer = StepTimer(clock=lambda: next(ticks))
    assert timer.lap(1000) == {"step_s": 0.5, "tokens_per_s": 2000.0}
    assert timer.lap(1000) == {"step_s": 2.0, "tokens_per_s": 500.0}


def test_light_modules_do_not_import_torch():
    code = (
        "import sys, adagc_repro.metrics, adagc_repro.eval, adagc_repro.eval.commands; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'lm_eval' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
