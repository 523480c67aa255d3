"""lr_spike: multiply the scheduled learning rate by `factor` for `duration` steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from adagc_repro.faults import FAULTS
from adagc_repro.faults.base import Trigger


@FAULTS.register("lr_spike")
@dataclass
class LrSpike(Trigger):
    factor: float = 10.0
    name: ClassVar[str] = "lr_spike"

    def lr_factor(self, step: int) -> float:
        return self.factor if self.active(step) else 1.0

    def event(self, step: int) -> dict[str, Any]:
        return {"factor": self.factor}
