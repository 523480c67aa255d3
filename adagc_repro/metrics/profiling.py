"""A torch.profiler capture of a few training steps, to explain where a step's time goes.

`train.profile_at=N` profiles steps N, N+1, N+2 of the run (pick N after compilation and warm-up) and
writes into `<run_dir>/profile/`: `trace.json.gz` (open in chrome://tracing or Perfetto) and
`operators.txt`: the time per step of the clipping and the optimizer (annotated with `phase()` in both
loops) and of the rest (the GPU time of their kernels on CUDA, host time on CPU),
then the operators with the most self time on the device (CUDA) or the host (CPU). The phase times
also go into the run's summary (`profile_phases_ms`).
`bench step --profile` captures the same steps of its plain loop, for a side-by-side comparison.
Off by default: a disabled profiler costs one comparison per step. Stopping a capture and writing it
take seconds of host time; `pause` (the loop's `StepTimer.pause`) keeps them out of the run's wall clock.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from adagc_repro.atomic import write_text

PROFILED_STEPS = 3
TOP_OPERATORS = 40
PHASES = ("clip", "optimizer")  # annotated in both loops; the rest of a step is forward, backward and bookkeeping


def phase(name: str):
    """Annotate one of PHASES in a training step; outside a capture it costs about a microsecond."""
    return torch.profiler.record_function(name)


def phase_ms(events, on_device: bool) -> dict[str, float]:
    """Milliseconds per profiled step: the clipping, the optimizer, everything else, and the total.

    On CUDA these are kernel times (each kernel counted once, as the self time of the operator that
    launched it); on CPU, operator host times. The backward pass is not annotated: the autograd engine
    runs it on its own thread, where the loop's annotations do not reach, so it is part of `other`.
    """
    totals = dict.fromkeys(PHASES, 0.0)
    total = 0.0
    for event in events:
        if event.device_type != torch.autograd.DeviceType.CPU:
            continue  # the device-side copies of the annotations
        total += event.self_device_time_total if on_device else event.self_cpu_time_total
        if event.key in totals:
            totals[event.key] += event.device_time_total if on_device else event.cpu_time_total
    totals["other"] = total - sum(totals.values())
    totals["total"] = total
    return {name: micros / 1e3 / PROFILED_STEPS for name, micros in totals.items()}


def phase_table(phases: dict[str, float], on_device: bool) -> str:
    where = "GPU kernel time" if on_device else "host time of the operators"
    return "\n".join([f"{where} per step, ms (other: forward, backward, the loop's bookkeeping):"] +
                      [f"  {name:<10} {ms:9.3f}" for name, ms in phases.items()])


class StepProfiler:
    """Call `before(step)` at the top of each step and `after(step)` at its end."""

    def __init__(self, folder: Path, first_step: int, *, enabled: bool = True,
                 pause: Callable[[], None] = lambda: None):
        self.folder, self.first, self.pause = Path(folder), int(first_step), pause
        self.last = self.first + PROFILED_STEPS - 1
        self.enabled = enabled and self.first > 0
        self.phase_ms: dict[str, float] | None = None  # once captured: ms per step of each of PHASES
        self._profiler = None

    def before(self, step: int) -> None:
        if self.enabled and step == self.first:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self._profiler = torch.profiler.profile(activities=activities)
            self._profiler.__enter__()

    def after(self, step: int) -> None:
        if self._profiler is not None and step == self.last:
            self.pause()
            self._profiler.__exit__(None, None, None)  # waits for the device's work of the profiled steps
            self._write(self._profiler)
            self._profiler = None

    def _write(self, profiler) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        trace = self.folder / "trace.json"
        profiler.export_chrome_trace(str(trace))
        with open(trace, "rb") as raw, gzip.open(self.folder / "trace.json.gz", "wb") as packed:
            shutil.copyfileobj(raw, packed)
        trace.unlink()
        on_device = torch.cuda.is_available()
        sort_by = "self_cuda_time_total" if on_device else "self_cpu_time_total"
        events = profiler.key_averages()
        self.phase_ms = phase_ms(events, on_device)
        table = events.table(sort_by=sort_by, row_limit=TOP_OPERATORS)
        write_text(self.folder / "operators.txt", f"steps {self.first}-{self.last}\n{phase_table(self.phase_ms, on_device)}"
                   f"\n\noperators, sorted by {sort_by}\n{table}\n")
