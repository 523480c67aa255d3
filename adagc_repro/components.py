"""The run's pluggable parts built from config by name: model, optimizer, LR schedule, clipper.

The loop in train.py sees only these four objects; everything registered in the model, optimizer,
schedule and clipping registries plugs in here without touching the loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from adagc_repro.config import hparams


@dataclass
class Components:
    model: Any
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


def build_components(cfg, *, vocab_size: int | None, device, faults) -> Components:
    """`faults` (adagc_repro.faults.FaultSet) acts at model build and inside the LR schedule."""
    from adagc_repro.clipping import build_clipper
    from adagc_repro.models import build_model
    from adagc_repro.optim import build_optimizer, build_schedule

    model = faults.at_model_build(build_model(cfg.model, vocab_size, device=device))
    optimizer = build_optimizer(cfg.optim, model, device_type=device.type)
    lr_factor = faults.lr_factor if faults.changes_lr else None
    scheduler = build_schedule(cfg.schedule, optimizer, total_steps=int(cfg.train.steps), lr_factor=lr_factor)
    clipper = build_clipper(cfg.clip.name, **hparams(cfg.clip, "name"))
    return Components(model, optimizer, scheduler, clipper)
