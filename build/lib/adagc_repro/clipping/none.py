"""No clipping: the baseline row. Norms are still computed so the pre-clip norm can be logged."""

from __future__ import annotations

from torch import Tensor

from adagc_repro.clipping.base import CLIPPERS, Clipper, Decision, GradBatch


@CLIPPERS.register("none")
class NoClip(Clipper):
    name = "none"

    def __init__(self):
        super().__init__()

    def _decide(self, batch: GradBatch, finite: Tensor, loss: Tensor | None) -> Decision:
        return Decision()
