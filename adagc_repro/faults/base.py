"""What every trigger shares: when it acts (a step window), what it logs, and its seeded randomness.

A trigger acts on steps `step` … `step + duration - 1` (duration 0: from `step` to the end of the
run). It overrides only the seams it needs; `FaultSet` calls a seam only for triggers that define it,
so a run without faults does no work at any seam.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from adagc_repro.errors import ConfigError

# The seams a trigger may define (see FaultSet for where the loop calls each):
#   on_model(model, context)                         at model build
#   on_batch(batch, step, micro, context) -> batch   before forward, per micro-batch
#   on_gradients(grads, step, context)               after backward, before clipping: [(name, grad)]
#   lr_factor(step) -> float                         inside the LR schedule
SEAMS = ("on_model", "on_batch", "on_gradients", "lr_factor")


@dataclass
class FaultContext:
    """What a trigger may depend on besides the step: the run's seed and this process's rank."""

    seed: int
    rank: int = 0
    vocab_size: int | None = None  # set at model build


@dataclass
class Trigger:
    step: int
    duration: int = 1
    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if self.step < 1:
            raise ConfigError(f"fault.{self.name}.step", f"must be >= 1, got {self.step}")
        if self.duration < 0:
            raise ConfigError(f"fault.{self.name}.duration", f"must be >= 0 (0: until the end), got {self.duration}")

    def active(self, step: int) -> bool:
        return step >= self.step and (self.duration == 0 or step < self.step + self.duration)

    def logs_at(self, step: int) -> bool:
        """Open-ended triggers log their onset only; the others every step they act."""
        return step == self.step if self.duration == 0 else self.active(step)

    def observe_from(self) -> int:
        """First step whose loss shows the trigger's effect on the model (not the faulty input itself)."""
        return self.step + 1

    def event(self, step: int) -> dict[str, Any]:
        """What metrics.jsonl records at a step the trigger acts on."""
        return {}

    def record(self, total_steps: int) -> dict[str, Any]:
        """The summary entry: parameters, the steps it acted on and where its effect is observed."""
        last = total_steps if self.duration == 0 else min(total_steps, self.step + self.duration - 1)
        return {
            "name": self.name,
            **asdict(self),
            "fired_steps": [self.step, last] if self.step <= total_steps else [],
            "observe_from": self.observe_from(),
        }

    @classmethod
    def defines(cls, seam: str) -> bool:
        return hasattr(cls, seam)


def seeded_generator(*parts: Any):
    """A CPU torch.Generator seeded by a stable hash of `parts` (run seed, trigger, step, ...)."""
    import torch

    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
