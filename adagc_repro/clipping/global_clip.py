"""GlobalGC: scale all gradients by min(1, max_norm / (‖g‖ + 1e-6)), ‖g‖ over all tensors (spec §1.1).

Identical to `torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)`: same norm, same
coefficient, always multiplied (no host sync). Differences: norms are taken in fp32 for bf16 gradients,
and a non-finite norm leaves the gradients untouched and skips the step instead of spreading NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

from adagc_repro.clipping.base import CLIPPERS, Clipper, Decision, GradBatch, check_number

TORCH_EPS = 1e-6  # the constant clip_grad_norm_ adds to the norm


def global_coef(total: Tensor, max_norm: float) -> Tensor:
    """clip_grad_norm_'s coefficient: clamp(max_norm / (total + 1e-6), max=1), elementwise for a vector."""
    return torch.clamp(max_norm / (total + TORCH_EPS), max=1.0)


class FixedThresholdClipper(Clipper):
    """Base of the clippers with one fixed `max_norm` (GlobalGC, LocalGC)."""

    def __init__(self, *, max_norm: float = 1.0):
        check_number("max_norm", max_norm, low=0.0, low_open=True)
        super().__init__(max_norm=max_norm)
        self.max_norm = float(max_norm)


@CLIPPERS.register("global")
class GlobalClip(FixedThresholdClipper):
    name = "global"

    def _decide(self, batch: GradBatch, finite: Tensor, loss: Tensor | None) -> Decision:
        return Decision(coefs=global_coef(batch.total, self.max_norm))
