"""StableAdamW (Wortsman et al. 2023): AdamW with Adafactor-style per-tensor update clipping.

Per tensor, at step t (from 1), with debiased betas β̂ = β(1 − β^{t−1})/(1 − β^t):

    m ← β̂₁m + (1 − β̂₁)g;   v ← β̂₂v + (1 − β̂₂)g²
    RMS = √mean(g² / max(v, ε²));   η = lr / max(1, RMS / d)
    θ ← θ·(1 − lr·λ) − η·m / (√v + ε)

as in the reference gist (decay uses the unclipped lr). `decay_uses_clipped_lr=True` decays with η
instead, which is what torch-optimi's StableAdamW does. RMS is computed for all tensors at once
(foreach norms), with no host sync.
"""

from __future__ import annotations

import torch

from adagc_repro.optim.stepping import AdamMomentsOptimizer, per_tensor


def debiased_beta(beta: float, step: int) -> float:
    return beta * (1.0 - beta ** (step - 1)) / (1.0 - beta**step)


class StableAdamW(AdamMomentsOptimizer):
    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        clip_threshold: float = 1.0,
        decay_uses_clipped_lr: bool = False,
    ):
        if lr <= 0 or eps < 0 or clip_threshold <= 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid StableAdamW hyperparameters lr={lr}, betas={betas}, eps={eps}")
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            clip_threshold=clip_threshold,
            decay_uses_clipped_lr=decay_uses_clipped_lr,
        )

    def _update(self, group: dict, params: list[torch.Tensor], step: int) -> None:
        beta1, beta2 = (debiased_beta(b, step) for b in group["betas"])
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        grads, exp_avgs, exp_avg_sqs = self._update_moments(params, beta1, beta2)

        ratios = torch._foreach_mul(grads, grads)
        torch._foreach_div_(ratios, torch._foreach_clamp_min(exp_avg_sqs, eps * eps))
        # Means by scalar division, so that sharded (DTensor) sums stay DTensors: full-tensor means.
        means = torch._foreach_div(torch._foreach_norm(ratios, ord=1, dtype=torch.float32), [p.numel() for p in params])
        rms = torch.stack(means).sqrt()
        clipped_lrs = lr / torch.clamp(rms / group["clip_threshold"], min=1.0)
        del ratios

        if wd:
            if group["decay_uses_clipped_lr"]:
                torch._foreach_mul_(params, per_tensor(1.0 - clipped_lrs * wd))
            else:
                torch._foreach_mul_(params, 1.0 - lr * wd)
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denoms, eps)
        updates = torch._foreach_div(exp_avgs, denoms)
        torch._foreach_mul_(updates, per_tensor(-clipped_lrs))
        torch._foreach_add_(params, updates)
