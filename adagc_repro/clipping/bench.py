"""Time per optimizer step of every clipper against `clip_grad_norm_(foreach=True)` on Llama-shaped gradients.

Gradients are built directly as tensors with the shapes a LlamaConfig gives (untied embeddings, no GQA), so
transformers is not needed. Times are CUDA events on GPU and perf_counter on CPU, warm-up calls excluded;
each row reports the median ms per call and its ratio to `clip_grad_norm_` measured in the same run, twice:

- `ms_per_step`: one call on an idle GPU, so the host's share (Dynamo's guards, kernel launches) counts
  wherever the GPU waits for it;
- `device_ms_per_step`: each call queued behind a GPU sleep longer than the host takes to enqueue it, so
  it is timed by the GPU's work alone. That is a training loop's situation: the host
  reaches the clipper while the GPU still runs the backward pass, and the launch cost is hidden.

On CPU, where work is synchronous, both are the host time.

With `optimizer="adamw"` every call is clipping plus an AdamW step (torch's fused one on GPU), the way a
training step spends it, and `impl="folded"` becomes possible: the clipper only decides and AdamW applies
the coefficients inside its update (optim/folded_adamw.py). A first row times the AdamW step alone, and
every row reports `clip_device_ms`, its GPU time beyond that step, with its ratio to `clip_grad_norm_`'s.
`main(argv)` is the command line of `scripts/bench_clipping.py` and of `adagc-repro bench clip`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from adagc_repro.clipping.base import CLIPPERS

# hidden size, layers, MLP width, vocabulary
LLAMA_SIZES = {
    "tiny": (64, 2, 128, 256),
    "134m": (768, 12, 2048, 32000),
    "1.35b": (2048, 24, 5504, 32000),
    "7b-shaped": (4096, 32, 11008, 32000),
}
BASELINE = "clip_grad_norm_"
OPTIMIZER_ALONE = "(no clipping)"
IMPLS = ("eager", "compiled", "folded")
OPTIMIZERS = ("adamw",)
# Run-length or loss-dependent strategies need a value to be built; everything else uses its defaults.
BENCH_HPARAMS = {"aggc": {"total_steps": 1000}}


def llama_shapes(hidden: int, layers: int, ffn: int, vocab: int) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of a LlamaForCausalLM with untied embeddings and full-width K/V."""
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        prefix = f"model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{prefix}self_attn.{proj}.weight"] = (hidden, hidden)
        shapes[f"{prefix}mlp.gate_proj.weight"] = (ffn, hidden)
        shapes[f"{prefix}mlp.up_proj.weight"] = (ffn, hidden)
        shapes[f"{prefix}mlp.down_proj.weight"] = (hidden, ffn)
        shapes[f"{prefix}input_layernorm.weight"] = (hidden,)
        shapes[f"{prefix}post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def make_named_params(size: str, device: torch.device, dtype: torch.dtype) -> list[tuple[str, torch.nn.Parameter]]:
    """Parameters with random weights and random gradients (std 1e-3) of the named model size."""
    named = []
    generator = torch.Generator(device=device).manual_seed(0)
    for name, shape in llama_shapes(*LLAMA_SIZES[size]).items():
        param = torch.nn.Parameter(torch.empty(shape, device=device, dtype=dtype).normal_(0, 0.02, generator=generator))
        param.grad = torch.empty_like(param).normal_(0, 1e-3, generator=generator)
        named.append((name, param))
    return named


def median_call_ms(step: Callable[[], Any], device: torch.device, repeats: int, warmup: int,
                   host_ahead: bool = False) -> float | None:
    """Median milliseconds per call of `step`; `host_ahead`: timed by the GPU's work alone (module docstring),
    None when the host cannot stay ahead (a call that waits for the GPU, e.g. reads a value back)."""
    for _ in range(warmup):
        step()
    if device.type != "cuda":
        times = []
        for _ in range(repeats):
            begin = time.perf_counter()
            step()
            times.append((time.perf_counter() - begin) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize(device)
    if not host_ahead:
        return statistics.median(_timed_calls(step, repeats))
    # One call at a time behind its own sleep: the GPU's launch queue holds about a thousand kernels, so
    # many calls enqueued behind one sleep would block the host until the GPU caught up.
    sleep_cycles = 2 * _host_seconds(step) * 1e3 * _sleep_cycles_per_ms(device)
    times = []
    for _ in range(repeats):
        ms = next((ms for attempt in range(4) if (ms := _call_behind_sleep(step, int(2**attempt * sleep_cycles)))
                   is not None), None)  # the sleep doubled until the host stays ahead of it
        if ms is None:
            return None
        times.append(ms)
    return statistics.median(times)


def _timed_calls(step: Callable[[], Any], repeats: int) -> list[float]:
    """CUDA-event milliseconds of `repeats` back-to-back calls."""
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for start, end in events:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def _call_behind_sleep(step: Callable[[], Any], sleep_cycles: int) -> float | None:
    """CUDA-event milliseconds of one call enqueued while the GPU sleeps; None when the GPU had finished its
    sleep before the host finished enqueueing the call (the host did not stay ahead)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(sleep_cycles)
    start.record()
    step()
    end.record()
    ahead = not start.query()
    end.synchronize()
    return start.elapsed_time(end) if ahead else None


def _host_seconds(work: Callable[[], Any]) -> float:
    torch.cuda.synchronize()
    begin = time.perf_counter()
    work()
    seconds = time.perf_counter() - begin
    torch.cuda.synchronize()
    return seconds


def _sleep_cycles_per_ms(device: torch.device, cycles: int = 10_000_000) -> float:
    """GPU clock cycles of `torch.cuda._sleep` per millisecond, measured."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    return cycles / start.elapsed_time(end)


def _build(name: str, impl: str):
    clipper = CLIPPERS.build(name, **BENCH_HPARAMS.get(name, {}))
    if impl != "eager":
        torch._dynamo.reset()  # every clipper shares `Clipper._clip`: start each from an empty compile cache
        clipper.compile()
    return clipper


def _clip_calls(named, loss: Tensor, optimizer: torch.optim.Optimizer | None, names: Sequence[str],
                impls: Sequence[str]) -> Iterator[tuple[str, str, Callable[[], Any]]]:
    """(clipper, impl, one call) of every row after the baseline; with an optimizer, each call steps it too.
    A clipper that cannot leave its scaling to the optimizer (AGC) has no folded row."""
    from adagc_repro.optim.folded_adamw import FoldedAdamW

    for name in names:
        for impl in impls:
            clipper = _build(name, impl)
            if optimizer is None:
                yield name, impl, lambda c=clipper: c(named, loss=loss)
            elif impl != "folded":
                yield name, impl, lambda c=clipper: _clip_and_step(c, named, loss, optimizer, None)
            elif clipper.can_defer(named):
                folded = FoldedAdamW(optimizer, named)
                yield name, impl, lambda c=clipper, f=folded: _clip_and_step(c, named, loss, optimizer, f)


def _clip_and_step(clipper, named, loss: Tensor, optimizer: torch.optim.Optimizer, folded) -> None:
    from adagc_repro.optim.stepping import step_clipped

    stats = clipper(named, loss=loss, scale=folded is None)
    step_clipped(optimizer, stats.skipped, stats, folded)


def _build_optimizer(name: str | None, named, device: torch.device) -> torch.optim.Optimizer | None:
    if name is None:
        return None
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {list(OPTIMIZERS)}")
    return torch.optim.AdamW([p for _, p in named], lr=1e-5, fused=device.type == "cuda" or None)


def _bench_size(size: str, device: torch.device, dtype: str, repeats: int, warmup: int,
                names: Sequence[str], impls: Sequence[str], optimizer_name: str | None = None
                ) -> Iterator[dict[str, Any]]:
    """The rows of one size, each as soon as it is measured (the baseline first)."""
    named = make_named_params(size, device, getattr(torch, dtype))
    params = [p for _, p in named]
    loss = torch.tensor(2.0, device=device)
    optimizer = _build_optimizer(optimizer_name, named, device)
    described = {
        "size": size, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": dtype, "tensors": len(named), "params": sum(p.numel() for p in params), "repeats": repeats,
        **({"optimizer": optimizer_name} if optimizer else {}),
    }
    then_step = optimizer.step if optimizer else (lambda: None)

    def row(name: str, impl: str, step: Callable[[], Any]) -> dict[str, Any]:
        ms, device_ms = (median_call_ms(step, device, repeats, warmup, host_ahead=ahead) for ahead in (False, True))
        return {**described, "clipper": name, "impl": impl, "ms_per_step": ms, "device_ms_per_step": device_ms}

    def with_ratios(measured: dict[str, Any]) -> dict[str, Any]:
        device_ms, device_baseline = measured["device_ms_per_step"], baseline["device_ms_per_step"]
        ratios = {"ratio_to_global": measured["ms_per_step"] / baseline["ms_per_step"],
                  "device_ratio_to_global": device_ms / device_baseline if device_ms and device_baseline else None}
        if alone is not None and device_ms and alone["device_ms_per_step"]:
            clip_ms, baseline_clip_ms = (ms - alone["device_ms_per_step"] for ms in (device_ms, device_baseline))
            ratios.update(clip_device_ms=clip_ms, clip_device_ratio_to_global=clip_ms / baseline_clip_ms)
        return {**measured, **ratios}

    alone = row(OPTIMIZER_ALONE, "eager", then_step) if optimizer else None
    baseline = row(BASELINE, "eager", lambda: (torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True), then_step()))
    if alone is not None:
        yield with_ratios(alone)
    yield with_ratios(baseline)
    for name, impl, call in _clip_calls(named, loss, optimizer, names, impls):
        yield with_ratios(row(name, impl, call))


def run_bench(device: str | None = None, sizes: Sequence[str] = ("134m", "1.35b", "7b-shaped"), repeats: int = 20,
              warmup: int = 3, dtype: str = "float32", names: Sequence[str] | None = None,
              impls: Sequence[str] = ("eager",), optimizer: str | None = None,
              on_row: Callable[[list[dict[str, Any]]], None] = lambda rows: None) -> list[dict[str, Any]]:
    """One row per (size, clipper, impl): median ms per step and the ratio to clip_grad_norm_(foreach=True).

    `impls`: "eager" (the reference path), "compiled" (`Clipper.compile()`, see clipping/fused.py) and, with
    `optimizer="adamw"`, "folded" (the coefficients applied inside AdamW's update; module docstring).
    `on_row(rows so far)` is called after every row, so that a run cut short keeps what it measured.
    """
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    unknown = [s for s in sizes if s not in LLAMA_SIZES]
    if unknown:
        raise ValueError(f"unknown sizes {unknown}; choose from {sorted(LLAMA_SIZES)}")
    if not set(impls) <= set(IMPLS):
        raise ValueError(f"unknown impl in {list(impls)}; choose from {list(IMPLS)}")
    if "folded" in impls and optimizer is None:
        raise ValueError("impl folded applies the clipping inside the optimizer: give an optimizer (--optimizer adamw)")
    rows: list[dict[str, Any]] = []
    for size in sizes:
        for row in _bench_size(size, target, dtype, repeats, warmup, names or CLIPPERS.names(), impls, optimizer):
            rows.append(row)
            on_row(rows)
        if target.type == "cuda":
            torch.cuda.empty_cache()  # the next size's gradients need the memory
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'size':<10} {'clipper':<16} {'impl':<9} {'ms/call':>9} {'x global':>9} {'device ms':>10} {'x global':>9}"
             "  (params, tensors, device, dtype)"]
    for row in rows:
        lines.append(f"{row['size']:<10} {row['clipper']:<16} {row['impl']:<9} {row['ms_per_step']:>9.3f} "
                     f"{row['ratio_to_global']:>9.2f} {_cell(row['device_ms_per_step'], '10.3f')} "
                     f"{_cell(row['device_ratio_to_global'], '9.2f')}"
                     f"  ({row['params'] / 1e6:.1f}M, {row['tensors']}, {row['device']}, {row['dtype']})")
    return "\n".join(lines)


def _cell(value: float | None, spec: str) -> str:
    return format(value, spec) if value is not None else format("–", ">" + spec.split(".")[0])


def write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    """Write the rows as JSON atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(rows, indent=1))
    os.replace(temporary, path)


def main(argv: Sequence[str] | None = None, default_out: Path | None = None) -> list[dict[str, Any]]:
    """Parse the benchmark options, print the table, write the JSON rows when an output path is given."""
    parser = argparse.ArgumentParser(prog="bench_clipping", description="Clipper cost per step vs clip_grad_norm_.")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--sizes", default="134m,1.35b,7b-shaped", help=f"comma list of {', '.join(LLAMA_SIZES)}")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per clipper (the median is reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    parser.add_argument("--dtype", default="float32", help="gradient dtype, e.g. float32 or bfloat16")
    parser.add_argument("--clippers", default=None, help="comma list of clipper names (default: all)")
    parser.add_argument("--impl", default="eager",
                        help="comma list of eager, compiled (Clipper.compile()), folded (needs --optimizer)")
    parser.add_argument("--optimizer", default=None, choices=OPTIMIZERS,
                        help="time each clipping call with an optimizer step after it (and an optimizer-only row)")
    parser.add_argument("--out", type=Path, default=default_out, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    def written(rows: list[dict[str, Any]]) -> None:  # after every row: a bench cut short keeps its rows
        if args.out is not None:
            write_rows(rows, args.out)

    rows = run_bench(device=None if args.device == "auto" else args.device, sizes=args.sizes.split(","),
                     repeats=args.repeats, warmup=args.warmup, dtype=args.dtype,
                     names=args.clippers.split(",") if args.clippers else None, impls=args.impl.split(","),
                     optimizer=args.optimizer, on_row=written)
    print(format_table(rows))
    if args.out is not None:
        print(f"wrote {args.out}")
    return rows
