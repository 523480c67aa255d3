"""Optimizer builders registered in `OPTIMIZERS`. Each takes `(model, device_type, **hparams)`.

Keys of `conf/optim/<name>.yaml` other than `name` are the keyword arguments below. `no_decay` lists
glob patterns of parameter names exempt from weight decay (1-D tensors are exempt unless `decay_1d`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from adagc_repro.optim import OPTIMIZERS
from adagc_repro.optim.param_groups import DEFAULT_NO_DECAY, decay_groups

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
