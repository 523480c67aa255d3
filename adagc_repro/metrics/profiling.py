"""A torch.profiler capture of a few training steps, to explain where a step's time goes.

`train.profile_at=N` profiles steps N, N+1, N+2 of the run (pick N after compilation and warm-up) and
writes into `<run_dir>/profile/`: `trace.json.gz` (open in chrome://tracing or Perfetto) and
`operators.txt`: the time per step of the clipping and the optimizer (annotated with `phase()` in the
training loop and the bench's plain loops) and of the rest (the GPU time of their kernels on CUDA,
host time on CPU),
then the operators with the most self time on the device (CUDA) or the host (CPU). The phase times
also go into the run's summary (`profile_phases_ms`).
`bench step --profile` captures the same steps of its plain loops, for a side-by-side comparison.
Off by default: a disabled profiler costs one comparison per step. Stopping a capture and writing it
take seconds of host time; `pause` (the loop's `StepTimer.pause`) keeps them out of the run's wall clock.
"""

from __future__ import annotations

import gzip
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from adagc_repro.atomic import write_text

PROFILED_STEPS = 3
TOP_OPERATORS = 40
PHASES = ("clip", "optimizer")  # annotated in every bench loop; the rest of a step is forward, backward and bookkeeping
_LAUNCH = re.compile(r"cu(da)?[A-Z]")  # the CUDA runtime and driver calls that queue device work


def phase(name: str):
    """Annotate one of PHASES in a training step; outside a capture it costs about a microsecond."""
    return torch.profiler.record_function(name)


def phase_ms(events, on_device: bool) -> dict[str, float]:
    """Milliseconds per profiled step: the clipping, the optimizer, everything else, and the total.

    `events` are the capture's FunctionEvents (`profile.events()`, not averaged: the phases need the
    host's call tree). On CUDA these are the GPU times of kernels, copies and memsets, each counted once,
    in the phase whose range on the host launched it; on CPU, operator host times. The backward pass is
    not annotated: the autograd engine runs it on its own thread, where the loop's annotations do not
    reach, so it is part of `other`.
    """
    totals = _device_phase_us(events) if on_device else _host_phase_us(events)
    totals["total"] = sum(totals.values())
    return {name: micros / 1e3 / PROFILED_STEPS for name, micros in totals.items()}


def _device_phase_us(events) -> dict[str, float]:
    """A device event is tied to its launch (cudaLaunchKernel, cuLaunchKernel, cudaMemcpyAsync, …) by
    its correlation id, and the launch to the phase by the host's call tree. Three things are not used:
    an annotated range's own span on the GPU timeline (`is_user_annotation`), which runs from its first
    kernel to its last and takes in whatever the GPU ran in between when the host is ahead (a 1B step's
    forward and backward); the kernels torch links to operators, which miss work launched straight from
    an annotated range; and ids alone, which operators and launches share."""
    launches = {e.id: e for e in events if e.device_type == torch.autograd.DeviceType.CPU and _LAUNCH.match(e.name)}
    totals = dict.fromkeys((*PHASES, "other"), 0.0)
    for work in events:
        if work.device_type == torch.autograd.DeviceType.CUDA and not work.is_user_annotation:
            totals[_enclosing_phase(launches.get(work.id))] += work.time_range.elapsed_us()
    return totals


def _enclosing_phase(event) -> str:
    while event is not None and event.name not in PHASES:
        event = event.cpu_parent
    return "other" if event is None else event.name


def _host_phase_us(events) -> dict[str, float]:
    operators = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU and not e.is_async]
    totals = dict.fromkeys((*PHASES, "other"), 0.0)
    for event in operators:
        totals[_enclosing_phase(event)] += event.self_cpu_time_total
    return totals


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
        self.phase_ms = phase_ms(profiler.events(), on_device)
        table = profiler.key_averages().table(sort_by=sort_by, row_limit=TOP_OPERATORS)
        write_text(self.folder / "operators.txt", f"steps {self.first}-{self.last}\n{phase_table(self.phase_ms, on_device)}"
                   f"\n\noperators, sorted by {sort_by}\n{table}\n")
