"""Step timing without a host sync per step: device events per step, read back at logging boundaries.

`StepTimer.start()` / `stop()` bracket one training step. On CUDA they record events on the current
stream, so a step's time is the device time from its first to its last queued kernel (everything the
step launched is counted, however far the host runs ahead); on CPU, where work is synchronous, they
read the host clock. `flush()` waits for the last recorded step and returns the seconds of every step
since the previous flush: call it only where the loop syncs anyway (every `train.log_every` steps).

The timer also measures wall-clock time, from the host clock at the first `start()` after a sync (the
device is idle then, so host and device clocks agree) to the next sync, for the honesty check
`tokens_per_s_wall`. It syncs once more by itself, when the warm-up steps are done, so that the
steady-state wall time excludes compilation, and `pause()` closes the window early so that host work
that is not training (a profile's export) stays out of it until the next `start()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from adagc_repro.metrics.throughput import timing_warmup_steps


class _HostMarks:
    """Host clock marks (CPU work is synchronous, so the clock covers all of it)."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock

    def mark(self) -> float:
        return self.clock()

    @staticmethod
    def seconds(begin: float, end: float) -> float:
        return end - begin

    @staticmethod
    def wait(mark: float) -> None:
        return None


class _CudaMarks:
    """CUDA events on the current stream; reading their times needs only the last one to have run."""

    def __init__(self, device: torch.device):
        self.device = device

    def mark(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    @staticmethod
    def seconds(begin: torch.cuda.Event, end: torch.cuda.Event) -> float:
        return begin.elapsed_time(end) / 1e3

    @staticmethod
    def wait(mark: torch.cuda.Event) -> None:
        mark.synchronize()


class StepTimer:
    """Seconds per training step, read back in batches; steady-state wall time for the summary."""

    def __init__(self, device: torch.device | str, total_steps: int, clock: Callable[[], float] = time.perf_counter):
        device = torch.device(device)
        self._marks = _CudaMarks(device) if device.type == "cuda" else _HostMarks(clock)
        self._clock = clock
        self.warmup = timing_warmup_steps(total_steps)
        self.step_seconds: list[float] = []  # every flushed step of this process, in order
        self.steady_wall_s = 0.0  # wall time of the windows after the warm-up steps
        self._pending: list[tuple[object, object]] = []
        self._begin: object | None = None
        self._window_opened: float | None = None
        self._timed = 0  # steps stopped so far

    def start(self) -> None:
        if self._window_opened is None:
            self._window_opened = self._clock()
        self._begin = self._marks.mark()

    def stop(self) -> None:
        """End the step started last; at the end of the warm-up, sync once to start the steady wall clock."""
        self._pending.append((self._begin, self._marks.mark()))
        self._timed += 1
        if self._timed == self.warmup:
            self._close_window(steady=False)

    def pause(self) -> None:
        """Close the wall-clock window after the last stopped step (one sync); the next `start()` reopens it."""
        if self._pending and self._window_opened is not None:
            self._close_window(steady=self._timed > self.warmup)

    def flush(self) -> list[float]:
        """Wait for the last stopped step; the seconds of each step stopped since the previous flush."""
        if not self._pending:
            return []
        self._close_window(steady=self._timed > self.warmup)
        return self._drain()

    def _close_window(self, *, steady: bool) -> None:
        self._marks.wait(self._pending[-1][1])
        if steady and self._window_opened is not None:
            self.steady_wall_s += self._clock() - self._window_opened
        self._window_opened = None

    def _drain(self) -> list[float]:
        seconds = [self._marks.seconds(begin, end) for begin, end in self._pending]
        self._pending.clear()
        self.step_seconds += seconds
        return seconds
