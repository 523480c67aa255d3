"""Lion (Chen et al. 2023): sign of an interpolated momentum, lr-coupled decoupled weight decay.

    c = β₁·m + (1 − β₁)·g;   θ ← θ·(1 − lr·λ) − lr·sign(c);   m ← β₂·m + (1 − β₂)·g

Scaling from AdamW: lr 3–10× smaller and λ 3–10× larger, so lr·λ stays the same (paper §5);
`lion_from_adamw` applies that rule.
"""

from __future__ import annotations

import torch

from adagc_repro.optim.stepping import closure_loss, states


def lion_from_adamw(adamw_lr: float, adamw_weight_decay: float, factor: float = 3.0) -> tuple[float, float]:
    """(lr, weight_decay) for Lion from tuned AdamW values: lr / factor and λ · factor (3 ≤ factor ≤ 10)."""
    return adamw_lr / factor, adamw_weight_decay * factor


class Lion(torch.optim.Optimizer):
    def __init__(
        self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0
    ):
        if lr <= 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid Lion hyperparameters lr={lr}, betas={betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if not self.state[p]:
                    self.state[p]["exp_avg"] = torch.zeros_like(p)
            grads = [p.grad for p in params]
            momenta = states(self, params, "exp_avg")
            beta1, beta2 = group["betas"]
            update = torch._foreach_lerp(momenta, grads, 1.0 - beta1)
            torch._foreach_sign_(update)
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1.0 - group["lr"] * group["weight_decay"])
            torch._foreach_add_(params, update, alpha=-group["lr"])
            torch._foreach_lerp_(momenta, grads, 1.0 - beta2)
        return loss
