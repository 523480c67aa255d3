"""Shared scaffolding for the foreach optimizers: closure handling, per-parameter step counts batched by
value, and the Adam moment state that StableAdamW and ClippyAdamW both keep."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch


def closure_loss(closure: Callable[[], Any] | None) -> Any:
    """The loss from re-evaluating `closure` with gradients enabled (as torch.optim does), or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def params_by_step(
    optimizer: torch.optim.Optimizer, group: dict[str, Any], init_state: Callable[[torch.Tensor], dict]
) -> dict[int, list[torch.Tensor]]:
    """Advance the step count of every parameter with a gradient; return them grouped by new count.

    Counts live on the CPU (as in torch.optim.Adam), so reading them costs no device sync; parameters
    that skipped steps (no gradient) keep their own bias correction.
    """
    batches: dict[int, list[torch.Tensor]] = defaultdict(list)
    for param in group["params"]:
        if param.grad is None:
            continue
        state = optimizer.state[param]
        if not state:
            state.update(init_state(param), step=torch.tensor(0.0))
        state["step"] += 1
        batches[int(state["step"].item())].append(param)
    return batches


def states(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], key: str) -> list[torch.Tensor]:
    return [optimizer.state[p][key] for p in params]


def per_tensor(values: torch.Tensor) -> list[torch.Tensor]:
    """A 1-D tensor of per-tensor factors as 0-d tensors, for foreach ops without a host sync."""
    return list(values.unbind())


class AdamMomentsOptimizer(torch.optim.Optimizer):
    """Base of the Adam variants here: `exp_avg`/`exp_avg_sq` state and a per-parameter step count.

    `step()` hands each group's parameters to `_update(group, params, step)` in batches that share a
    step count; subclasses implement `_update` and usually start it with `_update_moments`.
    """

    def __init__(
        self,
        params,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        **extra_defaults: Any,
    ):
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            **extra_defaults,
        }
        super().__init__(params, defaults)

    @staticmethod
    def _init_state(param: torch.Tensor) -> dict:
        return {"exp_avg": torch.zeros_like(param), "exp_avg_sq": torch.zeros_like(param)}

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            for step, params in params_by_step(self, group, self._init_state).items():
                self._update(group, params, step)
        return loss

    def _update(self, group: dict, params: list[torch.Tensor], step: int) -> None:
        raise NotImplementedError

    def _update_moments(
        self, params: list[torch.Tensor], beta1: float, beta2: float
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """m ← β₁m + (1 − β₁)g and v ← β₂v + (1 − β₂)g², in place; returns (grads, m, v)."""
        grads = [p.grad for p in params]
        exp_avgs, exp_avg_sqs = states(self, params, "exp_avg"), states(self, params, "exp_avg_sq")
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        return grads, exp_avgs, exp_avg_sqs


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """True when `optimizer.step()` can be skipped by a device flag (torch's fused Adam/AdamW/SGD).

    These read `optimizer.found_inf` (the hook GradScaler uses): a 1.0 there leaves parameters, moments
    and step counts exactly as they were, inside the fused kernel, with no host sync.
    """
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and all(
        group.get("fused") for group in optimizer.param_groups)


def step_unless(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """`optimizer.step()` unless the 0-d bool tensor `skip` is true; every state untouched when skipped.

    Fused torch optimizers decide on the device (`found_inf`). The others read `skip` back to the host,
    one sync per step: their step counts live on the host (bias corrections are Python floats), and an
    exact masked update costs more than the sync: a skipped step's non-finite gradients must not reach
    the moments, so every moment would go through a select (extra passes over the optimizer state each
    step), and a device-side copy to restore would cost a full copy of parameters and state.
    """
    if not skips_on_device(optimizer):
        if not bool(skip):
            optimizer.step()
        return
    optimizer.found_inf = skip.to(torch.float32).reshape(())
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf


def step_clipped(optimizer: torch.optim.Optimizer, skip: torch.Tensor, stats, folded=None) -> None:
    """The loop's optimizer step after clipping: `step_unless(optimizer, skip)`, or, with `folded` (a
    `FoldedAdamW`, for a clipper called with `scale=False`), the step that applies `stats.coefs` itself."""
    if folded is None:
        step_unless(optimizer, skip)
    else:
        folded.step(stats.names, stats.coefs, skip)
