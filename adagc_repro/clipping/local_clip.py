"""LocalGC: fixed per-tensor threshold, g_i <- g_i * min(1, max_norm / (‖g_i‖ + 1e-6)).

"Local but not adaptive": the cell that completes AdaGC's locality × adaptivity ablation (spec §3.10).
"""

from __future__ import annotations

from torch import Tensor

from adagc_repro.clipping.base import CLIPPERS, Decision, GradBatch
from adagc_repro.clipping.global_clip import FixedThresholdClipper, global_coef


@CLIPPERS.register("local")
class LocalClip(FixedThresholdClipper):
    name = "local"

    def _decide(self, batch: GradBatch, finite: Tensor, loss: Tensor | None) -> Decision:
        # GlobalGC's coefficient, taken per tensor.
        return Decision(coefs=global_coef(batch.norms, self.max_norm), ratios=batch.norms / self.max_norm)
