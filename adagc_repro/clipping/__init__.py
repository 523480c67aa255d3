"""Gradient clipping strategies behind one interface; depends on torch and the standard library only.

    from adagc_repro.clipping import build_clipper
    clipper = build_clipper("adagc", lambda_rel=1.04, beta=0.99)
    clipper.attach(model)                      # once, before the first backward
    loss.backward()
    stats = clipper(model, loss=loss)          # scales .grad in place
    if not stats.skipped:                      # non-finite gradient (or a skip_step spike)
        optimizer.step()
    optimizer.zero_grad()

Every clipper has `state_dict()` / `load_state_dict()`; `stats.as_metrics()` gives the scalars to log.
"""

from __future__ import annotations

from typing import Any

from adagc_repro.clipping import (  # noqa: F401  (importing registers the strategies)
    adagc,
    adagc_global,
    agc,
    aggc,
    autoclip,
    global_clip,
    local_clip,
    none,
    skip_step,
    zclip,
)
from adagc_repro.clipping.base import CLIPPERS, Clipper, ClipStats
from adagc_repro.clipping.telemetry import clip_telemetry


def build_clipper(name: str, **hparams: Any) -> Clipper:
    """Build a registered clipper; unknown names or hyperparameters raise ConfigError naming `clip.<key>`."""
    return CLIPPERS.build(name, **hparams)


__all__ = ["CLIPPERS", "ClipStats", "Clipper", "build_clipper", "clip_telemetry"]
