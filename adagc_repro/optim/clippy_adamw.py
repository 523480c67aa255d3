"""AdamW with Clippy update clipping (Tang et al. 2023).

Each tensor's Adam update Δ = lr·m̂/(√v̂ + ε) is scaled by one factor σ ∈ (0, 1], the largest that
keeps every coordinate within  λ_rel·|w_j| + λ_abs :

    σ = min(1, min_j (λ_rel·|w_j| + λ_abs) / |Δ_j|)

Decoupled weight decay θ ← θ(1 − lr·λ) is applied as in AdamW and is not clipped. The thresholds
default to TF `ClippyAdagrad`'s (variable_relative_threshold 0.1, absolute_threshold 1e-7).
"""

from __future__ import annotations

import math

import torch

from adagc_repro.optim.stepping import AdamMomentsOptimizer, per_tensor


class ClippyAdamW(AdamMomentsOptimizer):
    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        variable_relative_threshold: float = 0.1,
        absolute_threshold: float = 1e-7,
    ):
        if lr <= 0 or absolute_threshold <= 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid ClippyAdamW hyperparameters lr={lr}, betas={betas}")
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            variable_relative_threshold=variable_relative_threshold,
            absolute_threshold=absolute_threshold,
        )

    def _update(self, group: dict, params: list[torch.Tensor], step: int) -> None:
        beta1, beta2 = group["betas"]
        _, exp_avgs, exp_avg_sqs = self._update_moments(params, beta1, beta2)

        # Δ = lr·m̂/(√v̂ + ε) with the usual bias corrections.
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denoms, math.sqrt(1.0 - beta2**step))
        torch._foreach_add_(denoms, group["eps"])
        updates = torch._foreach_div(exp_avgs, denoms)
        torch._foreach_mul_(updates, group["lr"] / (1.0 - beta1**step))

        # σ = 1 / max(1, max_j |Δ_j| / bound_j), one factor per tensor, no host sync.
        bounds = torch._foreach_abs(params)
        torch._foreach_mul_(bounds, group["variable_relative_threshold"])
        torch._foreach_add_(bounds, group["absolute_threshold"])
        excess = torch._foreach_abs(updates)
        torch._foreach_div_(excess, bounds)
        worst = torch.stack(torch._foreach_norm(excess, ord=math.inf, dtype=torch.float32))
        scales = 1.0 / torch.clamp(worst, min=1.0)

        if group["weight_decay"]:
            torch._foreach_mul_(params, 1.0 - group["lr"] * group["weight_decay"])
        torch._foreach_mul_(updates, per_tensor(-scales))
        torch._foreach_add_(params, updates)
