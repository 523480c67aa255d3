"""Optimizers and learning-rate schedules, chosen by name from the `optim` and `schedule` config groups.

`build_optimizer({name: adamw, lr: .., ...}, model)` returns a `torch.optim.Optimizer` (the Muon hybrid
included: one object, one `step()`); `build_schedule({name: cosine, ...}, optimizer, total_steps)` a
LambdaLR whose multiplier scales every param group, so groups keep their relative learning rates.
Clipping is not done here: the training loop clips all gradients once before `step()`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from adagc_repro.errors import ConfigError, check_range
from adagc_repro.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

OPTIMIZERS = Registry("optimizer", "optim")
SCHEDULES = Registry("schedule", "schedule")

# Builders register on import; optimizer classes (and torch) are imported only when one is built.
from adagc_repro.optim import optimizers as _optimizers  # noqa: E402,F401
from adagc_repro.optim import schedules as _schedules  # noqa: E402,F401

__all__ = ["OPTIMIZERS", "SCHEDULES", "build_optimizer", "build_schedule", "check_optimizer_config",
           "check_schedule_config"]

# Ranges of the hyperparameters optimizers share; torch checks some only when it builds one, without the key.
RANGES = {
    "lr": {"low": 0.0, "low_open": True},
    "adamw_lr": {"low": 0.0, "low_open": True},
    "eps": {"low": 0.0},
    "adamw_eps": {"low": 0.0},
    "weight_decay": {"low": 0.0},
    "adamw_weight_decay": {"low": 0.0},
    "momentum": {"low": 0.0, "high": 1.0, "high_open": True},
}
BETAS = ("betas", "adamw_betas")


def _split_name(cfg: Mapping[str, Any], key: str) -> tuple[str, dict[str, Any]]:
    from adagc_repro.models import plain_mapping

    hparams = plain_mapping(cfg)
    name = hparams.pop("name", None)
    if name is None:
        raise ConfigError(f"{key}.name", "missing")
    return name, hparams


def check_optimizer_config(optim_cfg: Mapping[str, Any], parallel: str = "none") -> None:
    """A registered optimizer, only its hyperparameters, each shared one in range (no model needed),
    and one that can step the parameters `parallel` lays out (`parallel=auto` is checked when built)."""
    from adagc_repro.optim.optimizers import UNSHARDED_ONLY, sharded_refusal

    name, hparams = _split_name(optim_cfg, "optim")
    OPTIMIZERS.check(name, hparams, ("model", "device_type"))
    if parallel == "fsdp2" and name in UNSHARDED_ONLY:
        raise sharded_refusal(name)
    for key, bounds in RANGES.items():
        if hparams.get(key) is not None:
            check_range(f"optim.{key}", hparams[key], **bounds)
    for key in BETAS:
        for index, beta in enumerate(hparams.get(key) or ()):
            check_range(f"optim.{key}[{index}]", beta, low=0.0, high=1.0, high_open=True)


def check_schedule_config(schedule_cfg: Mapping[str, Any], total_steps: int) -> None:
    """Build the LR multiplier once: each schedule checks its own hyperparameters."""
    name, hparams = _split_name(schedule_cfg, "schedule")
    SCHEDULES.build(name, int(total_steps), **hparams)


def build_optimizer(
    optim_cfg: Mapping[str, Any], model: nn.Module, *, device_type: str = "cpu"
) -> torch.optim.Optimizer:
    """The optimizer named by `optim_cfg.name` over `model`'s trainable parameters."""
    name, hparams = _split_name(optim_cfg, "optim")
    return OPTIMIZERS.build(name, model, device_type, **hparams)


def build_schedule(
    schedule_cfg: Mapping[str, Any],
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    lr_factor: Callable[[int], float] | None = None,
) -> torch.optim.lr_scheduler.LRScheduler:
    """LambdaLR with the named multiplier; call `.step()` once after every optimizer step.

    `lr_factor(step)` (training steps count from 1) multiplies the schedule, e.g. a fault's LR spike.
    """
    from torch.optim.lr_scheduler import LambdaLR

    name, hparams = _split_name(schedule_cfg, "schedule")
    multiplier = SCHEDULES.build(name, int(total_steps), **hparams)
    return LambdaLR(optimizer, multiplier if lr_factor is None else partial(_times, multiplier, lr_factor))


def _times(multiplier, lr_factor, index: int) -> float:
    """LambdaLR's index i is the schedule of training step i + 1. A partial of this module function
    keeps LambdaLR's state_dict free of objects (it saves only the partial's empty __dict__)."""
    return multiplier(index) * lr_factor(index + 1)
