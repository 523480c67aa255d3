"""AdaGC: per-tensor adaptive clipping (arXiv 2502.11034, Algorithm 1; spec §3).

Warm-up, steps 1..warmup_steps (exactly as the official PyTorch/Megatron code counts them): global
clipping at lambda_abs, and γ_i = running minimum of tensor i's norm after that global clip
(`warmup_norm="raw"`: before it, as the Paddle/ERNIE code does).
Afterwards, per tensor: h_i = min(1, lambda_rel·γ_i / (‖g_i‖ + eps)), ĝ_i = h_i·g_i and
γ_i ← β·γ_i + (1−β)·‖ĝ_i‖, the EMA of the *clipped* norm.

Edge cases (spec §3.8): a tensor whose gradient norm is zero leaves γ_i alone (a zero-gradient step in
warm-up would otherwise set γ_i = 0 and freeze the tensor for good); a tensor first seen after warm-up
starts from γ_i = its current norm, so it is not clipped on that step; with warmup_steps = 0 the first
step is therefore unclipped.

`shard=True` is the "AdaGC-Shard" mode: with sharded (DTensor) gradients each local shard is clipped as
its own tensor with its own γ, so no per-tensor collective is needed.

Difference from pytorch-optimizer's `AdaGC` optimizer: it warms up while `step < warmup_steps` with step
counted from 1, i.e. for warmup_steps - 1 steps, and uses max(·, eps) with eps = 1e-8 where this code adds
eps = 1e-6. `AdaGC(warmup_steps=W, eps=e)` matches `adagc(warmup_steps=W - 1, eps=e)` up to that eps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from adagc_repro.clipping.base import (
    CLIPPERS,
    Clipper,
    Decision,
    GradBatch,
    check_bool,
    check_choice,
    check_int,
    check_number,
)

WARMUP_NORMS = ("clipped", "raw")


def check_adagc_hparams(lambda_rel: float, beta: float, warmup_steps: int, lambda_abs: float, eps: float) -> None:
    check_number("lambda_rel", lambda_rel, low=0.0, low_open=True)
    check_number("beta", beta, low=0.0, high=1.0, high_open=True)
    check_int("warmup_steps", warmup_steps)
    check_number("lambda_abs", lambda_abs, low=0.0, low_open=True)
    check_number("eps", eps, low=0.0)


def adagc_rule(norms: Tensor, warm_norms: Tensor, gamma: Tensor, seen: Tensor, in_warmup: Tensor,
               global_coef: Tensor, *, lambda_rel: float, beta: float, eps: float
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One AdaGC step for a vector of norms: (coefs, new gamma, new seen, adaptive threshold).

    In warm-up every entry gets `global_coef` and γ becomes the running min of `warm_norms`; afterwards
    each entry is clipped to lambda_rel·γ and γ becomes the EMA of the clipped norm. Zero norms leave γ alone.
    """
    has_norm = norms > 0
    gamma_warm = torch.where(seen, torch.minimum(gamma, warm_norms), warm_norms)
    gamma_prev = torch.where(seen, gamma, norms)  # first sight after warm-up: γ = current norm
    threshold = lambda_rel * gamma_prev
    clip = norms > threshold
    coef_adaptive = torch.where(clip, threshold / (norms + eps), torch.ones_like(norms))
    gamma_adaptive = beta * gamma_prev + (1.0 - beta) * torch.minimum(norms, threshold)
    gamma_new = torch.where(has_norm, torch.where(in_warmup, gamma_warm, gamma_adaptive), gamma)
    coefs = torch.where(in_warmup, global_coef.expand_as(norms), coef_adaptive)
    return coefs, gamma_new, seen | has_norm, threshold


@CLIPPERS.register("adagc")
class AdaGC(Clipper):
    name = "adagc"

    def __init__(self, *, lambda_rel: float = 1.04, beta: float = 0.99, warmup_steps: int = 100,
                 lambda_abs: float = 1.0, eps: float = 1e-6, warmup_norm: str = "clipped", shard: bool = False):
        check_adagc_hparams(lambda_rel, beta, warmup_steps, lambda_abs, eps)
        check_choice("warmup_norm", warmup_norm, WARMUP_NORMS)
        check_bool("shard", shard)
        super().__init__(lambda_rel=lambda_rel, beta=beta, warmup_steps=warmup_steps, lambda_abs=lambda_abs,
                         eps=eps, warmup_norm=warmup_norm, shard=shard)
        self.lambda_rel, self.beta, self.lambda_abs, self.eps = float(lambda_rel), float(beta), float(lambda_abs), float(eps)
        self.warmup_steps = warmup_steps
        self.warmup_norm = warmup_norm
        self.shard = shard

    def _initial_state(self, n_tensors: int, device: torch.device) -> dict[str, Tensor]:
        return {
            "gamma": torch.zeros(n_tensors, dtype=torch.float32, device=device),
            "seen": torch.zeros(n_tensors, dtype=torch.bool, device=device),  # γ_i holds a value
        }

    def _decide(self, batch: GradBatch, finite: Tensor, loss: Tensor | None) -> Decision:
        gamma, seen = batch.gather(self._state["gamma"]), batch.gather(self._state["seen"])
        norms = batch.norms
        in_warmup = self._state["step"] + 1 <= self.warmup_steps
        global_coef = torch.clamp(self.lambda_abs / (batch.total + self.eps), max=1.0)
        warm_norms = norms * global_coef if self.warmup_norm == "clipped" else norms
        coefs, gamma_new, seen_new, threshold = adagc_rule(
            norms, warm_norms, gamma, seen, in_warmup, global_coef,
            lambda_rel=self.lambda_rel, beta=self.beta, eps=self.eps)
        return Decision(
            coefs=coefs,
            ratios=torch.where(in_warmup, torch.full_like(norms, math.nan), norms / threshold),
            state={
                "gamma": batch.scatter(self._state["gamma"], gamma_new),
                "seen": batch.scatter(self._state["seen"], seen_new),
            },
            extras={
                "adagc_warmup": in_warmup.float(),
                "adagc_gamma_min": torch.where(seen, gamma, math.inf).min(),
            },
        )
