"""SDPA backends at the bench models' attention shapes: forward + backward GPU time, causal, bf16.

    python scripts/bench_attention.py --out attention.json

For each shape (`llama_130m` and `llama_1b` at 16x1024 tokens), names the kernel torch picks on its own
(`default`, timed first, before any backend is forced) and times every SDPA backend that accepts the
shape (median of CUDA-event-timed forward+backward calls), with its largest output and input-gradient
difference from the flash backend. Backends are forced with `sdpa_kernel` without `set_priority`: that
flag, used before torch has initialised its own order, leaves flash first after the context exits, on
builds where torch would try cuDNN first (torch >= 2.9 with cuDNN >= 9.15 on Hopper).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = {"llama_130m": (16, 12, 1024, 64), "llama_1b": (16, 32, 1024, 64)}  # batch, heads, tokens, head dim
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def fwd_bwd(q, k, v, grad, backend):
    """One forward and backward; `backend` None: torch's own choice."""
    with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    return out, dq


def median_ms(call, repeats: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def torch_choice(q, k, v) -> str:
    """The attention operator torch's own dispatch runs for this call."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as capture:
        torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    chosen = [e.name for e in capture.events() if e.name.startswith("aten::_") and "attention" in e.name]
    return chosen[0] if chosen else "none"


def measure(shape: tuple[int, int, int, int]) -> dict[str, dict]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_() for _ in range(3))
    grad = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
    default = {"operator": torch_choice(q, k, v), "ms": median_ms(lambda: fwd_bwd(q, k, v, grad, None))}
    reference = fwd_bwd(q, k, v, grad, BACKENDS["flash"])
    rows = {"default": default}
    for name, backend in BACKENDS.items():
        try:
            out, dq = fwd_bwd(q, k, v, grad, backend)
        except RuntimeError as error:  # the backend does not take this shape here
            rows[name] = {"error": str(error).splitlines()[0]}
            continue
        rows[name] = {"ms": median_ms(lambda b=backend: fwd_bwd(q, k, v, grad, b)),
                      "max_abs_diff_out": float((out - reference[0]).abs().max()),
                      "max_abs_diff_dq": float((dq - reference[1]).abs().max())}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(), "cudnn": torch.backends.cudnn.version(),
              "shapes": {name: {"batch_heads_tokens_dim": shape, "backends": measure(shape)}
                         for name, shape in SHAPES.items()}}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
