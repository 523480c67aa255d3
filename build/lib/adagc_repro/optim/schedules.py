"""Learning-rate multipliers for LambdaLR: cosine, WSD, linear and constant, each with linear warm-up.

A schedule builder takes `total_steps` and its hyperparameters and returns a picklable multiplier
`step -> factor` (step counts optimizer steps from 0). Warm-up rises linearly to 1 over `warmup_steps`
(factor (step+1)/warmup_steps, so the first step is not taken at lr 0); the decay then runs from the
end of warm-up to `total_steps`, ending at `min_lr_ratio`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from adagc_repro.errors import ConfigError
from adagc_repro.optim import SCHEDULES

DECAY_SHAPES = ("linear", "cosine", "sqrt")


def _decay(shape: str, progress: float) -> float:
    """Fraction of the way from peak (1) to the floor (0) after `progress` ∈ [0, 1] of the decay."""
    if shape == "linear":
        return progress
    if shape == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * progress))
    return math.sqrt(progress)  # "sqrt", the shape used by WSD in MiniCPM


def _check(total_steps: int, warmup_steps: int, min_lr_ratio: float) -> None:
    if warmup_steps < 0:
        raise ConfigError("schedule.warmup_steps", f"must be >= 0, got {warmup_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ConfigError("schedule.min_lr_ratio", f"must be in [0, 1], got {min_lr_ratio}")
    if total_steps < 1:
        raise ConfigError("train.steps", f"must be >= 1, got {total_steps}")


@dataclass(frozen=True)
class WarmupDecay:
    """1 during the plateau, decaying over [decay_start, total_steps] to min_lr_ratio."""

    total_steps: int
    warmup_steps: int
    decay_start: int
    min_lr_ratio: float
    shape: str

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.shape == "constant" or step < self.decay_start:
            return 1.0
        span = max(1, self.total_steps - self.decay_start)
        progress = min(1.0, (step - self.decay_start) / span)
        return 1.0 - (1.0 - self.min_lr_ratio) * _decay(self.shape, progress)


@SCHEDULES.register("cosine")
def cosine(total_steps: int, *, warmup_steps: int = 0, min_lr_ratio: float = 0.1) -> WarmupDecay:
    _check(total_steps, warmup_steps, min_lr_ratio)
    return WarmupDecay(total_steps, warmup_steps, warmup_steps, min_lr_ratio, "cosine")


@SCHEDULES.register("linear")
def linear(total_steps: int, *, warmup_steps: int = 0, min_lr_ratio: float = 0.0) -> WarmupDecay:
    _check(total_steps, warmup_steps, min_lr_ratio)
    return WarmupDecay(total_steps, warmup_steps, warmup_steps, min_lr_ratio, "linear")


@SCHEDULES.register("constant")
def constant(total_steps: int, *, warmup_steps: int = 0) -> WarmupDecay:
    _check(total_steps, warmup_steps, 1.0)
    return WarmupDecay(total_steps, warmup_steps, total_steps, 1.0, "constant")


@SCHEDULES.register("wsd")
def wsd(
    total_steps: int,
    *,
    warmup_steps: int = 0,
    decay_fraction: float = 0.2,
    min_lr_ratio: float = 0.0,
    decay_type: str = "linear",
) -> WarmupDecay:
    """Warm-up, stable at peak, then decay over the last `decay_fraction` of the run."""
    _check(total_steps, warmup_steps, min_lr_ratio)
    if not 0.0 <= decay_fraction <= 1.0:
        raise ConfigError("schedule.decay_fraction", f"must be in [0, 1], got {decay_fraction}")
    if decay_type not in DECAY_SHAPES:
        raise ConfigError("schedule.decay_type", f"unknown decay type {decay_type!r}", DECAY_SHAPES)
    decay_start = max(warmup_steps, total_steps - round(decay_fraction * total_steps))
    return WarmupDecay(total_steps, warmup_steps, decay_start, min_lr_ratio, decay_type)
