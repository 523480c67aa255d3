"""Throughput and model FLOPs utilisation (MFU), following torchtitan's conventions (spec §1.9).

MFU here is a **percent**: 100 · flops_per_token · tokens_per_s / peak_flops, where flops_per_token
counts forward + backward (6N + attention) and the peak is the accelerator's dense 16-bit tensor-core
throughput. Pure Python: importing this module does not import torch.
"""

from __future__ import annotations

import statistics

# Dense (no sparsity) bf16/fp16 peak FLOP/s per device, from torchtitan `tools/utils.py::get_peak_flops`
# and the vendors' datasheets. Ordered: the first substring found in the device name wins, so variants
# come before their family name ("GB200" before "B200", "H100 NVL" before "H100").
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("GB300", 2.5e15),
    ("GB200", 2.5e15),
    ("B300", 2.25e15),
    ("B200", 2.25e15),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM and other variants
    ("H200 NVL", 836e12),
    ("H200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("MI355X", 2.5e15),
    ("MI325X", 1.3e15),
    ("MI300X", 1.3e15),
    ("MI250X", 191.5e12),  # per graphics compute die, the unit torch sees as one device
)

TIMING_WARMUP_STEPS = 5  # at most; never more than half the run

# Precisions whose matmuls run on the 16-bit tensor cores the table describes.
_SIXTEEN_BIT = {"bf16", "bfloat16", "fp16", "float16", "half", "bf16-mixed", "16-mixed", "fp16-mixed"}


def peak_flops(device_name: str, dtype) -> float | None:
    """Peak FLOP/s of `device_name` (e.g. torch.cuda.get_device_name()) for `dtype`.

    `dtype` may be a torch dtype or a precision string ("bf16", "fp16", "bf16-mixed", ...). Returns
    None for unknown devices, CPUs and fp32 training, where no single meaningful peak exists (TF32
    use depends on global torch flags), so MFU is reported as null rather than guessed.
    """
    precision = str(dtype).removeprefix("torch.").lower()
    if precision not in _SIXTEEN_BIT:
        return None
    name = device_name.lower()
    for fragment, flops in PEAK_FLOPS:
        if fragment.lower() in name:
            return flops
    return None


def mfu(tokens_per_s: float | None, flops_per_token: float | None, peak: float | None) -> float | None:
    """Model FLOPs utilisation in percent, or None when any input is unknown."""
    if not tokens_per_s or not flops_per_token or not peak:
        return None
    return 100.0 * flops_per_token * tokens_per_s / peak


def timing_warmup_steps(total_steps: int) -> int:
    """Steps left out of steady-state throughput: compilation, autotuning and allocator warm-up."""
    return min(TIMING_WARMUP_STEPS, total_steps // 2)


def steady_throughput(step_seconds: list[float], tokens_per_step: int, *, warmup: int, steady_wall_s: float = 0.0,
                      flops_per_token: float | None = None, peak: float | None = None) -> dict[str, float | None]:
    """Summary throughput from per-step seconds: the median step after `warmup` steps, not the mean of all.

    `compile_s` is what the warm-up steps took beyond that many steady steps (compilation, autotuning);
    `train_s` all timed steps; `tokens_per_s_wall` the steady tokens over the steady wall-clock time, which
    the median-based `tokens_per_s` should match (host stalls between steps show up as a gap).
    """
    if not step_seconds:
        return {"tokens_per_s": None, "mfu": None, "step_s": None, "compile_s": None, "train_s": 0.0,
                "tokens_per_s_wall": None, "timing_warmup_steps": warmup}
    warmup = min(warmup, len(step_seconds) - 1)
    steady = step_seconds[warmup:]
    median = statistics.median(steady)
    tokens_per_s = tokens_per_step / median if median > 0 else None
    return {
        "tokens_per_s": tokens_per_s,
        "mfu": mfu(tokens_per_s, flops_per_token, peak),
        "step_s": median,
        "compile_s": max(0.0, sum(step_seconds[:warmup]) - warmup * median),
        "train_s": sum(step_seconds),
        "tokens_per_s_wall": tokens_per_step * len(steady) / steady_wall_s if steady_wall_s > 0 else None,
        "timing_warmup_steps": warmup,
    }
