"""Deterministic spike triggers (the `fault` config group): one file per trigger, a registry by name.

`fault=grad_scale` or several at once, `fault=[grad_scale,lr_spike]`: each option puts one entry
under `fault.<name>` (e.g. `fault.grad_scale.step=120`). `build_faults` turns that node into a
`FaultSet`, which the training loop calls at its seams (see fault_set.py). Triggers are pure functions
of (run seed, step, rank, micro-batch), so resumed and repeated runs fault identically.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adagc_repro.errors import ConfigError
from adagc_repro.registry import Registry

FAULTS = Registry("fault", "fault")

# Triggers register on import.
from adagc_repro.faults import bitflip as _bitflip  # noqa: E402,F401
from adagc_repro.faults import data_outlier as _data_outlier  # noqa: E402,F401
from adagc_repro.faults import grad_scale as _grad_scale  # noqa: E402,F401
from adagc_repro.faults import lowp_norm as _lowp_norm  # noqa: E402,F401
from adagc_repro.faults import lr_spike as _lr_spike  # noqa: E402,F401
from adagc_repro.faults.base import FaultContext, Trigger  # noqa: E402
from adagc_repro.faults.fault_set import FaultSet  # noqa: E402

__all__ = ["FAULTS", "FaultSet", "build_faults", "validate_fault_config"]


def _triggers(fault_cfg: Mapping[str, Any] | None) -> list[Trigger]:
    triggers = []
    for name, params in (fault_cfg or {}).items():
        if name not in FAULTS:
            raise ConfigError(f"fault.{name}", "unknown fault", FAULTS.names())
        try:
            triggers.append(FAULTS.build(name, **dict(params or {})))
        except ConfigError as error:  # the registry names the key as fault.<key>: put the trigger in it
            key = error.key if error.key.startswith(f"fault.{name}") else error.key.replace("fault.", f"fault.{name}.", 1)
            raise ConfigError(key, error.problem, error.allowed) from None
        except TypeError as error:
            raise ConfigError(f"fault.{name}", str(error)) from None
    return triggers


def build_faults(fault_cfg: Mapping[str, Any] | None, *, seed: int, rank: int = 0) -> FaultSet:
    """The run's FaultSet from its resolved `fault` node (None or {}: no faults)."""
    from adagc_repro.models import plain_mapping

    return FaultSet(_triggers(plain_mapping(fault_cfg) if fault_cfg else None), FaultContext(seed=seed, rank=rank))


def validate_fault_config(resolved: Mapping[str, Any]) -> None:
    """Every entry of `fault` names a registered trigger with its own, valid hyperparameters."""
    _triggers(resolved.get("fault"))
