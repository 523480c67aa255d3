"""Optimizer builders registered in `OPTIMIZERS`. Each takes `(model, device_type, **hparams)`.

Keys of `conf/optim/<name>.yaml` other than `name` are the keyword arguments below. `no_decay` lists
glob patterns of parameter names exempt from weight decay (1-D tensors are exempt unless `decay_1d`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from adagc_repro.errors import ConfigError
from adagc_repro.optim import OPTIMIZERS
from adagc_repro.optim.param_groups import DEFAULT_NO_DECAY, decay_groups

UNSHARDED_ONLY = ("spam", "stable_spam")  # pytorch-optimizer's code indexes plain tensors

if TYPE_CHECKING:
    from torch import nn


@OPTIMIZERS.register("adamw")
def adamw(
    model: nn.Module,
    device_type: str = "cpu",
    *,
    lr: float = 1e-3,
    betas: Sequence[float] = (0.9, 0.95),
    eps: float = 1e-8,
    weight_decay: float = 0.1,
    no_decay: Sequence[str] = DEFAULT_NO_DECAY,
    decay_1d: bool = False,
    fused: bool | None = None,
):
    """torch.optim.AdamW, decoupled decay θ ← θ(1 − lr·λ); fused kernels on CUDA unless `fused: false`."""
    import torch

    groups = decay_groups(model.named_parameters(), weight_decay, no_decay, decay_1d)
    use_fused = device_type == "cuda" if fused is None else fused
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=use_fused or None)


@OPTIMIZERS.register("lion")
def lion(
    model: nn.Module,
    device_type: str = "cpu",
    *,
    lr: float = 3e-4,
    betas: Sequence[float] = (0.9, 0.99),
    weight_decay: float = 0.3,
    no_decay: Sequence[str] = DEFAULT_NO_DECAY,
    decay_1d: bool = False,
):
    """Lion (spec §7.2). Defaults follow `lion_from_adamw(1e-3, 0.1, factor=3)`: lr·λ as in AdamW."""
    from adagc_repro.optim.lion import Lion

    groups = decay_groups(model.named_parameters(), weight_decay, no_decay, decay_1d)
    return Lion(groups, lr=lr, betas=tuple(betas))


@OPTIMIZERS.register("muon")
def muon(
    model: nn.Module,
    device_type: str = "cpu",
    *,
    lr: float = 1e-3,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    weight_decay: float = 0.1,
    adjust_lr_fn: str = "match_rms_adamw",
    adamw_lr: float | None = None,
    adamw_betas: Sequence[float] = (0.9, 0.95),
    adamw_eps: float = 1e-8,
    adamw_weight_decay: float | None = None,
    no_decay: Sequence[str] = DEFAULT_NO_DECAY,
    decay_1d: bool = False,
):
    """Muon on hidden 2-D matrices + AdamW on the rest, one optimizer (spec §7.3).

    `adjust_lr_fn`: "match_rms_adamw" (Moonlight: lr·0.2·√max(A,B), so one AdamW-tuned lr and weight
    decay serve both parts; the default) or "original" (lr·√max(1, A/B); Keller Jordan's recipe is
    lr 0.02, weight_decay 0.01 with adamw_lr 3e-4). `adamw_lr`/`adamw_weight_decay` default to
    `lr`/`weight_decay`.
    """

    from adagc_repro.errors import ConfigError
    from adagc_repro.optim.muon import MuonWithAdamW, muon_param_names

    if adjust_lr_fn not in ("original", "match_rms_adamw"):
        raise ConfigError(
            "optim.adjust_lr_fn", f"unknown value {adjust_lr_fn!r}", ["original", "match_rms_adamw"]
        )
    muon_names = set(muon_param_names(model))
    named = list(model.named_parameters())
    muon_groups = [
        {"params": [p for n, p in named if n in muon_names and p.ndim == ndim], "weight_decay": weight_decay,
         "group": group}
        for ndim, group in ((2, "muon"), (3, "muon_experts"))
    ]
    adamw_groups = decay_groups(
        [(n, p) for n, p in named if n not in muon_names],
        weight_decay if adamw_weight_decay is None else adamw_weight_decay,
        no_decay,
        decay_1d,
        lr=lr if adamw_lr is None else adamw_lr,
    )
    for group in adamw_groups:
        group["group"] = f"adamw_{group['group']}"
    muon_kwargs = {
        "lr": lr,
        "momentum": momentum,
        "nesterov": nesterov,
        "ns_steps": ns_steps,
        "adjust_lr_fn": adjust_lr_fn,
    }
    adamw_kwargs = {"betas": tuple(adamw_betas), "eps": adamw_eps, "fused": (device_type == "cuda") or None}
    return MuonWithAdamW([g for g in muon_groups if g["params"]], adamw_groups, muon_kwargs, adamw_kwargs)


@OPTIMIZERS.register("stableadamw")
def stableadamw(
    model: nn.Module,
    device_type: str = "cpu",
    *,
    lr: float = 1e-3,
    betas: Sequence[float] = (0.9, 0.99),
    eps: float = 1e-6,
    weight_decay: float = 0.1,
    clip_threshold: float = 1.0,
    decay_uses_clipped_lr: bool = False,
    no_decay: Sequence[str] = DEFAULT_NO_DECAY,
    decay_1d: bool = False,
):
    """StableAdamW (spec §6): per-tensor update clipping inside the optimizer; pair it with clip=none."""
    from adagc_repro.optim.stable_adamw import StableAdamW

    groups = decay_groups(model.named_parameters(), weight_decay, no_decay, decay_1d)
    return StableAdamW(
        groups,
        lr=lr,
        betas=tuple(betas),
        eps=eps,
        clip_threshold=clip_threshold,
        decay_uses_clipped_lr=decay_uses_clipped_lr,
    )


@OPTIMIZERS.register("clippy_adamw")
def clippy_adamw(
    model: nn.Module,
    device_type: str = "cpu",
    *,
    lr: float = 1e-3,
    betas: Sequence[float] = (0.9, 0.95),
    eps: float = 1e-8,
    weight_decay: float = 0.1,
    variable_relative_threshold: float = 0.1,
    absolute_threshold: float = 1e-3,
    no_decay: Sequence[str] = DEFAULT_NO_DECAY,
    decay_1d: bool = False,
):
    """AdamW whose per-tensor update is scaled so no coordinate moves more than λ_rel|w| + λ_abs (§8.5)."""
    from adagc_repro.optim.clippy_adamw import ClippyAdamW

    groups = decay_groups(model.named_parameters(), weight_decay, no_decay, decay_1d)
    return ClippyAdamW(
        groups,
        lr=lr,
        betas=tuple(betas),
        eps=eps,
        variable_relative_threshold=variable_relative_threshold,
        absolute_threshold=absolute_threshold,
    )


@OPTIMIZERS.register("spam")
def spam(
    model: nn.Module,
    device_type: str = "cpu",
    *,
    lr: float = 1e-3,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-6,
    weight_decay: float = 0.1,
    threshold: float = 5000,
    update_proj_gap: int = 500,
    warmup_epoch: int = 150,
    grad_accu_steps: int = 20,
    density: float = 1.0,
    no_decay: Sequence[str] = DEFAULT_NO_DECAY,
    decay_1d: bool = False,
):
    """SPAM (spec §8.2), pytorch-optimizer's implementation: momentum reset every `update_proj_gap`
    steps, spike-aware element clipping (g² > threshold·v), cosine lr warm-up over `warmup_epoch` steps
    after each reset (150, the official SPAM code's value; pytorch-optimizer's own default is 50)."""
    from pytorch_optimizer import SPAM

    _require_unsharded(model, "spam")
    groups = decay_groups(model.named_parameters(), weight_decay, no_decay, decay_1d)
    return SPAM(
        groups,
        lr=lr,
        betas=tuple(betas),
        eps=eps,
        threshold=threshold,
        update_proj_gap=update_proj_gap,
        warmup_epoch=warmup_epoch,
        grad_accu_steps=grad_accu_steps,
        density=density,
    )


@OPTIMIZERS.register("stable_spam")
def stable_spam(
    model: nn.Module,
    device_type: str = "cpu",
    *,
    lr: float = 1e-3,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.1,
    gamma1: float = 0.7,
    gamma2: float = 0.9,
    theta: float = 0.999,
    update_proj_gap: int = 1000,
    t_max: int | None = None,
    eta_min: float = 0.5,
    no_decay: Sequence[str] = DEFAULT_NO_DECAY,
    decay_1d: bool = False,
):
    """Stable-SPAM (spec §8.3), pytorch-optimizer's implementation: AdaClip on max|g| (θ), AdaGN on ‖g‖
    (γ₁, γ₂), momentum reset every `update_proj_gap` steps, optional β₁ cosine decay over `t_max`."""
    from pytorch_optimizer import StableSPAM

    _require_unsharded(model, "stable_spam")
    groups = decay_groups(model.named_parameters(), weight_decay, no_decay, decay_1d)
    return StableSPAM(
        groups,
        lr=lr,
        betas=tuple(betas),
        eps=eps,
        gamma1=gamma1,
        gamma2=gamma2,
        theta=theta,
        update_proj_gap=update_proj_gap,
        t_max=t_max,
        eta_min=eta_min,
        foreach=None,
    )


def _require_unsharded(model: nn.Module, name: str) -> None:
    """pytorch-optimizer's SPAM and Stable-SPAM fail on FSDP2's DTensor parameters, and Stable-SPAM's
    per-tensor max|g| and norm would be those of each rank's shard if it ran on the local shards."""
    from adagc_repro.clipping.norms import is_sharded

    if is_sharded([p for p in model.parameters() if p.requires_grad]):
        raise sharded_refusal(name)


def sharded_refusal(name: str) -> ConfigError:
    return ConfigError("optim.name", f"{name} (pytorch-optimizer's) cannot step FSDP2-sharded parameters; "
                       "with parallel=fsdp2 use another optimizer, or parallel=ddp",
                       [n for n in OPTIMIZERS.names() if n not in UNSHARDED_ONLY])
