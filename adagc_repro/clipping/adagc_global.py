"""Global AdaGC: AdaGC's warm-up and EMA rule applied to the global norm ("adaptive but not local").

The official PyTorch code's `GlobalAdaGC` (AdaGC-Global mode, spec §3.7), used in the paper's locality ×
adaptivity ablation: steps 1..warmup_steps clip globally at lambda_abs and keep γ = running min of
min(‖g‖, lambda_abs); afterwards the whole gradient is clipped to lambda_rel·γ and γ is the EMA of the
clipped global norm.
"""

from __future__ import annotations

import torch
from torch import Tensor

from adagc_repro.clipping.adagc import adagc_rule, check_adagc_hparams
from adagc_repro.clipping.base import CLIPPERS, Clipper, Decision, GradBatch


@CLIPPERS.register("adagc_global")
class AdaGCGlobal(Clipper):
    name = "adagc_global"

    def __init__(self, *, lambda_rel: float = 1.04, beta: float = 0.99, warmup_steps: int = 100,
                 lambda_abs: float = 1.0, eps: float = 1e-6):
        check_adagc_hparams(lambda_rel, beta, warmup_steps, lambda_abs, eps)
        super().__init__(lambda_rel=lambda_rel, beta=beta, warmup_steps=warmup_steps, lambda_abs=lambda_abs, eps=eps)
        self.lambda_rel, self.beta, self.lambda_abs, self.eps = float(lambda_rel), float(beta), float(lambda_abs), float(eps)
        self.warmup_steps = warmup_steps

    def _initial_state(self, n_tensors: int, device: torch.device) -> dict[str, Tensor]:
        return {"gamma": torch.zeros(1, dtype=torch.float32, device=device),
                "seen": torch.zeros(1, dtype=torch.bool, device=device)}

    def _decide(self, batch: GradBatch, finite: Tensor, loss: Tensor | None) -> Decision:
        total = batch.total.reshape(1)
        in_warmup = self._state["step"] + 1 <= self.warmup_steps
        global_coef = torch.clamp(self.lambda_abs / (total + self.eps), max=1.0)
        coef, gamma, seen, threshold = adagc_rule(
            total, torch.clamp(total, max=self.lambda_abs), self._state["gamma"], self._state["seen"], in_warmup,
            global_coef, lambda_rel=self.lambda_rel, beta=self.beta, eps=self.eps)
        return Decision(
            coefs=coef.reshape(()),
            state={"gamma": gamma, "seen": seen},
            extras={"adagc_warmup": in_warmup.float(), "adagc_gamma": self._state["gamma"][0],
                    "adagc_threshold": torch.where(in_warmup, self.lambda_abs, threshold[0])},
        )
