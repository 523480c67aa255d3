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
    """Every registry-backed group names a registered builder and only its hyperparameters."""
    from adagc_repro.clipping import CLIPPERS
    from adagc_repro.models import MODELS
    from adagc_repro.optim import OPTIMIZERS, SCHEDULES

    for key, registry, selector, positional in (
        ("model", MODELS, "family", ()),
        ("optim", OPTIMIZERS, "name", ("model", "device_type")),
        ("schedule", SCHEDULES, "name", ("total_steps",)),
        ("clip", CLIPPERS, "name", ()),
    ):
        node = resolved[key]
        kwargs = {k: v for k, v in node.items() if k not in ("name", "family", "seq_len")}
        registry.check(node[selector], kwargs, positional)


def build_components(cfg, *, vocab_size: int | None, device) -> Components:
    from adagc_repro.clipping import build_clipper
    from adagc_repro.distributed.parallelize import parallelize
    from adagc_repro.models import build_model
    from adagc_repro.optim import build_optimizer, build_schedule

    model = build_model(cfg.model, vocab_size, device=device)
    runner = parallelize(model, strategy=str(cfg.parallel.name), activation_checkpointing=str(cfg.train.activation_checkpointing),
                         compile=bool(cfg.train.compile), precision=str(cfg.train.precision), device=device)
    optimizer = build_optimizer(cfg.optim, model, device_type=device.type)
    scheduler = build_schedule(cfg.schedule, optimizer, total_steps=int(cfg.train.steps))
    clipper = build_clipper(cfg.clip.name, **hparams(cfg.clip, "name"))
    return Components(model, runner, optimizer, scheduler, clipper)
