"""AdamW with the clipper's per-tensor coefficients folded into its update (`train.fold_clip`).

Scaling a gradient by its clipping coefficient (ĝ = h·g) is a pass that reads and writes every
gradient, after the pass that measured the norms and before AdamW reads ĝ once more. Folded, the
clipper only measures and decides (`clipper(model, scale=False)`), and this step multiplies each
gradient by its coefficient as it reads it, inside one compiled update: the clipping costs one read of
the gradients instead of three passes.

The update is torch's fused AdamW kernel's (decoupled decay θ ← θ − lr·λ·θ, bias corrections from the
step count) on torch.optim.AdamW's own state (`exp_avg`, `exp_avg_sq`, `step`), so the folded and the
unfolded paths share checkpoints. A skipped step (non-finite or spike, a device flag) leaves parameters,
moments and step counts exactly as they were, by a select inside the same kernels: no host sync.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from adagc_repro.clipping.fused import compile_step


def foldable(optimizer: torch.optim.Optimizer) -> bool:
    """True for a torch.optim.AdamW this step reproduces: no amsgrad or maximize, and step counts on the
    parameters' device (fused or capturable on a GPU; any mode on the CPU)."""
    return type(optimizer) is torch.optim.AdamW and all(
        not group["amsgrad"] and not group["maximize"] and not group["differentiable"]
        and (group["fused"] or group["capturable"] or all(p.device.type == "cpu" for p in group["params"]))
        for group in optimizer.param_groups)


class FoldedAdamW:
    """Steps `optimizer` (a torch.optim.AdamW, see `foldable`) with each gradient multiplied by its clipping
    coefficient. `model` (a module or (name, parameter) pairs) names the parameters as the clipper does,
    which is how the coefficients find them. `backend="none"` runs the update eagerly."""

    def __init__(self, optimizer: torch.optim.AdamW, model: nn.Module | Iterable[tuple[str, Tensor]],
                 backend: str = "inductor"):
        if not foldable(optimizer):
            raise ValueError("folding clipping into the optimizer needs torch.optim.AdamW without amsgrad, "
                             "maximize or differentiable, with step counts on the parameters' device")
        self.optimizer = optimizer
        named = model.named_parameters() if isinstance(model, nn.Module) else model
        self._names = {id(p): name for name, p in named}
        self._update = compile_step(_adamw_update, backend) if backend != "none" else _adamw_update
        self._positions: dict[tuple[str, ...], list[tuple[int, ...]]] = {}

    @torch.no_grad()
    def step(self, names: Sequence[str], coefs: Tensor, skip: Tensor) -> None:
        """One AdamW step with gradient i of `names` scaled by `coefs[i]` (fp32 [n]); parameters the clipper
        did not bind are stepped unscaled. Nothing changes where the 0-d bool `skip` is true."""
        positions = self._positions.get(tuple(names)) or self._cache_positions(tuple(names))
        for group, group_positions in zip(self.optimizer.param_groups, positions, strict=True):
            params, grads, exp_avgs, exp_avg_sqs, steps = self._group_tensors(group)
            if not params:
                continue
            beta1, beta2 = group["betas"]
            self._update(params, grads, exp_avgs, exp_avg_sqs, steps, coefs, group_positions, skip,
                         _device_scalar(group["lr"], coefs.device),
                         beta1=float(beta1), beta2=float(beta2), weight_decay=float(group["weight_decay"]),
                         eps=float(group["eps"]))

    def _group_tensors(self, group: dict[str, Any]) -> tuple[list[Tensor], ...]:
        """The group's parameters with gradients and their state, created as torch.optim.AdamW creates it."""
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        self.optimizer._init_group(group, params, grads, exp_avgs, exp_avg_sqs, [], steps)
        return params, grads, exp_avgs, exp_avg_sqs, steps

    def _cache_positions(self, names: tuple[str, ...]) -> list[tuple[int, ...]]:
        """For each group, each gradient-bearing parameter's index into the coefficients (len(names): none)."""
        index = {name: i for i, name in enumerate(names)}
        positions = [tuple(index.get(self._names.get(id(p)), len(names)) for p in group["params"] if p.grad is not None)
                     for group in self.optimizer.param_groups]
        self._positions[names] = positions
        return positions


def _device_scalar(value: float | Tensor, device: torch.device) -> Tensor:
    """A 0-d fp32 tensor on `device`: a tensor stays one (no read-back); a float is filled in by a kernel
    (a copy from host memory would wait for the device), so the lr can change every step without a sync
    or a recompilation."""
    if torch.is_tensor(value):
        return value.to(device, torch.float32)
    return torch.full((), value, dtype=torch.float32, device=device)


def _adamw_update(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                  steps: list[Tensor], coefs: Tensor, positions: tuple[int, ...], skip: Tensor, lr: Tensor, *,
                  beta1: float, beta2: float, weight_decay: float, eps: float) -> None:
    """torch's fused AdamW update of one group in place, gradient i scaled by coefs[positions[i]]
    (a position of len(coefs): not clipped)."""
    coefs = torch.cat([coefs.float(), coefs.new_ones(1, dtype=torch.float32)])
    for param, grad, exp_avg, exp_avg_sq, step, position in zip(
            params, grads, exp_avgs, exp_avg_sqs, steps, positions, strict=True):
        g = grad.float() * coefs[position]
        count = step + 1
        m = beta1 * exp_avg + (1 - beta1) * g
        v = beta2 * exp_avg_sq + (1 - beta2) * g * g
        bias_correction1 = 1 - torch.pow(beta1, count)
        bias_correction2_sqrt = torch.sqrt(1 - torch.pow(beta2, count))
        decayed = param - lr * weight_decay * param
        updated = decayed - (lr / bias_correction1) * m / (torch.sqrt(v) / bias_correction2_sqrt + eps)
        for state, new in ((param, updated), (exp_avg, m), (exp_avg_sq, v), (step, count)):
            state.copy_(torch.where(skip, state, new))


FOLD_CLIP_CHOICES = ("auto", "true", "false")


def build_folding(setting: str | bool, optimizer: torch.optim.Optimizer, clipper,
                  model: nn.Module | Iterable[tuple[str, Tensor]], compiled: bool) -> FoldedAdamW | None:
    """`train.fold_clip`: the folded step, or None where the clipper scales the gradients itself.

    auto folds when the step is compiled (eagerly, a per-tensor update is many small kernels) and the
    pair allows it; true insists, and names why it cannot; false never folds.
    """
    from adagc_repro.errors import ConfigError

    choice = str(setting).lower()
    if choice not in FOLD_CLIP_CHOICES:
        raise ConfigError("train.fold_clip", f"unknown value {setting!r}", FOLD_CLIP_CHOICES)
    if choice == "false" or (choice == "auto" and not compiled):
        return None
    if not foldable(optimizer):
        if choice == "auto":
            return None
        raise ConfigError("train.fold_clip", "needs optim=adamw (fused on CUDA, without amsgrad)", ["auto", "false"])
    if not clipper.can_defer(model):
        if choice == "auto":
            return None
        raise ConfigError("train.fold_clip", f"clip={clipper.name} cannot leave its scaling to the optimizer here "
                          "(unit-wise clipping, stacked experts or sharded gradients)", ["auto", "false"])
    return FoldedAdamW(optimizer, model, backend="inductor" if compiled else "none")
