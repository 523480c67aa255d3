"""The run's pluggable parts built from config by name: model, optimizer, LR schedule, clipper.

The loop in train.py sees only these objects; everything registered in the model, optimizer,
schedule and clipping registries plugs in here without touching the loop. The model is parallelized
(DDP / FSDP2 / activation checkpointing / compile) before the optimizer sees its parameters;
`runner` is what the loop calls forward on, `model` keeps the parameter names clippers report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from adagc_repro.config import hparams


@dataclass
class Components:
    model: Any
    runner: Any
    optimizer: Any
    scheduler: Any
    clipper: Any


def validate_component_configs(resolved: Mapping[str, Any]) -> None:
    """Every registry-backed group names a registered builder, only its hyperparameters, each in range.

    Building a clipper needs no model, and its constructor checks every hyperparameter, so it is built once.
    """
    from adagc_repro.clipping import build_clipper
    from adagc_repro.models import check_model_config
    from adagc_repro.optim import check_optimizer_config, check_schedule_config

    check_model_config(resolved["model"], resolved["train"]["seq_len"])
    check_optimizer_config(resolved["optim"], resolved["parallel"]["name"])
    check_schedule_config(resolved["schedule"], resolved["train"]["steps"])
    build_clipper(resolved["clip"]["name"], **hparams(resolved["clip"], "name"))


def build_components(cfg, *, vocab_size: int | None, device, faults) -> Components:
    """`faults` (adagc_repro.faults.FaultSet) acts at model build and inside the LR schedule."""
    from adagc_repro.clipping import build_clipper
    from adagc_repro.distributed.parallelize import parallelize
    from adagc_repro.models import build_model
    from adagc_repro.optim import build_optimizer, build_schedule

    model = faults.at_model_build(build_model(cfg.model, vocab_size, device=device))
    runner = parallelize(model, strategy=str(cfg.parallel.name), activation_checkpointing=str(cfg.train.activation_checkpointing),
                         compile=compile_enabled(cfg.train.compile, device), precision=str(cfg.train.precision), device=device,
                         bucket_cap_mb=cfg.parallel.get("bucket_cap_mb"))
    optimizer = build_optimizer(cfg.optim, model, device_type=device.type)
    lr_factor = faults.lr_factor if faults.changes_lr else None
    scheduler = build_schedule(cfg.schedule, optimizer, total_steps=int(cfg.train.steps), lr_factor=lr_factor)
    clipper = build_clipper(cfg.clip.name, **hparams(cfg.clip, "name"))
    return Components(model, runner, optimizer, scheduler, clipper)


def compile_enabled(setting: str | bool, device) -> bool:
    """`train.compile`: auto compiles on CUDA only (on CPU, compiling costs more than small models gain)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)
