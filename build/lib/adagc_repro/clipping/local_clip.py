"""LocalGC: fixed per-tensor threshold, g_i <- g_i * min(1, max_norm / (‖g_i‖ + 1e-6)).

"Local but not adaptive": the cell that completes AdaGC's locality × adaptivity ablation (spec §3.10).
"""

from __future__ import annotations

import torch
from torch import Tensor

from adagc_repro.clipping.base import CLIPPERS, Clipper, Decision, GradBatch, check_number
from adagc_repro.clipping.global_clip import TORCH_EPS


@CLIPPERS.register("local")
class LocalClip(Clipper):
    name = "local"

    def __init__(self, *, max_norm: float = 1.0):
        check_number("max_norm", max_norm, low=0.0, low_open=True)
        super().__init__(max_norm=max_norm)
        self.max_norm = float(max_norm)

    def _decide(self, batch: GradBatch, finite: Tensor, loss: Tensor | None) -> Decision:
        coefs = torch.clamp(self.max_norm / (batch.norms + TORCH_EPS), max=1.0)
        return Decision(coefs=coefs, ratios=batch.norms / self.max_norm)
