"""Helpers shared by the clipping tests: parameters with Llama-like names, deterministic gradient steps,
and hyperparameters that reach every strategy's adaptive phase quickly. Imports only torch, so the GPU
tests can run where the reference packages are not installed. (No tests here.)"""

from __future__ import annotations

from pathlib import Path

import torch

from adagc_repro.clipping import build_clipper

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "clip"

# Llama-like names so grouping, exclusion and layer parsing are exercised.
SHAPES = {
    "model.embed_tokens.weight": (16, 8),
    "model.layers.0.self_attn.q_proj.weight": (8, 8),
    "model.layers.0.self_attn.k_proj.weight": (8, 8),
    "model.layers.0.mlp.up_proj.weight": (12, 8),
    "model.layers.0.input_layernorm.weight": (8,),
    "model.layers.1.self_attn.q_proj.weight": (8, 8),
    "model.layers.1.self_attn.k_proj.weight": (8, 8),
    "model.layers.1.mlp.up_proj.weight": (12, 8),
    "model.layers.1.input_layernorm.weight": (8,),
    "model.norm.weight": (8,),
    "lm_head.weight": (16, 8),
}

# Hyperparameters that reach every strategy's adaptive phase within a few steps.
CONFIGS = {
    "none": {},
    "global": {"max_norm": 1.0},
    "adagc": {"warmup_steps": 3},
    "adagc_global": {"warmup_steps": 3},
    "local": {"max_norm": 0.5},
    "zclip": {"warmup_steps": 4, "z_thresh": 1.5},
    "aggc": {"beta": 0.5, "total_steps": 20},
    "agc": {"clip_val": 0.05},
    "autoclip": {"percentile": 30.0},
    "skip_step": {"rolling_interval_length": 19, "sigma_factor": 1.0, "max_norm": 3.0},
}


def named_params(seed: int = 0, shapes: dict[str, tuple[int, ...]] = SHAPES) -> list[tuple[str, torch.nn.Parameter]]:
    generator = torch.Generator().manual_seed(seed)
    return [(name, torch.nn.Parameter(torch.randn(shape, generator=generator))) for name, shape in shapes.items()]


def step_grads(named, step: int, seed: int = 0, spike_every: int = 4) -> list[torch.Tensor]:
    """Deterministic gradients for `step`: mostly O(1) norms, every `spike_every` steps a 20x spike on one tensor."""
    generator = torch.Generator().manual_seed(1000 * seed + step)
    grads = [torch.randn(p.shape, generator=generator) * 0.3 for _, p in named]
    if spike_every and step % spike_every == spike_every - 1:
        grads[step % len(grads)] *= 20.0
    return grads


def set_grads(named, grads) -> None:
    for (_, p), g in zip(named, grads, strict=True):
        p.grad = None if g is None else g.clone()


def grads_of(named) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for _, p in named]


def run(clipper, named, steps, seed: int = 0, start: int = 0) -> list[dict]:
    """Feed `steps` deterministic gradient steps; return the metrics and post-clip grads of each."""
    out = []
    for step in range(start, start + steps):
        set_grads(named, step_grads(named, step, seed))
        stats = clipper(named, loss=torch.tensor(2.0 + 0.01 * step))
        out.append({"metrics": stats.as_metrics(), "grads": grads_of(named)})
    return out


def build(name: str, **overrides):
    return build_clipper(name, **{**CONFIGS[name], **overrides})


def assert_same_state(a: dict, b: dict) -> None:
    assert a["param_names"] == b["param_names"]
    assert a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        assert torch.equal(a["state"][key], b["state"][key]), key
