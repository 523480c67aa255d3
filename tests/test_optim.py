"""Optimizers: each trains the tiny model, round-trips its state, and builds from its conf file."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from test_optim_helpers import TINY_LLAMA

from adagc_repro.errors import ConfigError
from adagc_repro.models import build_model, forward_loss
from adagc_repro.optim import OPTIMIZERS, build_optimizer

CONF_OPTIM = Path(__file__).resolve().parents[1] / "conf" / "optim"
OPTIM_NAMES = sorted(p.stem for p in CONF_OPTIM.glob("*.yaml"))


def optim_cfg(name: str, **overrides) -> dict:
    return {**yaml.safe_load((CONF_OPTIM / f"{name}.yaml").read_text()), **overrides}


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(TINY_LLAMA)


def fixed_batch() -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, 96, (4, 24), generator=torch.Generator().manual_seed(1))}


def train(model, opt, batch, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss, _ = forward_loss(model, batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_every_conf_file_names_a_registered_optimizer():
    assert OPTIM_NAMES and set(OPTIM_NAMES) <= set(OPTIMIZERS.names())


@pytest.mark.parametrize("name", OPTIM_NAMES)
def test_optimizer_lowers_tiny_model_loss(name):
    model = tiny_model()
    opt = build_optimizer(optim_cfg(name), model)
    losses = train(model, opt, fixed_batch(), 40)
    assert losses[-1] < losses[0] - 0.5, (name, losses[0], losses[-1])


@pytest.mark.parametrize("name", OPTIM_NAMES)
def test_state_dict_round_trip_gives_identical_next_steps(name):
    batch = fixed_batch()
    model = tiny_model()
    opt = build_optimizer(optim_cfg(name), model)
    train(model, opt, batch, 3)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())

    fresh_model = tiny_model(seed=123)
    fresh_model.load_state_dict(saved_model)
    fresh_opt = build_optimizer(optim_cfg(name), fresh_model)
    fresh_opt.load_state_dict(saved_opt)

    assert train(model, opt, batch, 3) == train(fresh_model, fresh_opt, batch, 3)
    for a, b in zip(model.parameters(), fresh_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_adamw_decay_groups_and_fused_flag():
    model = tiny_model()
    opt = build_optimizer(optim_cfg("adamw"), model, device_type="cuda")
    assert opt.defaults["fused"] is True
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert names and all(n.endswith("proj.weight") or n == "lm_head.weight" for n in names)
    assert not any("norm" in n or "embed" in n for n in names)
    assert build_optimizer(optim_cfg("adamw"), model).defaults["fused"] is None


def test_unknown_optimizer_hyperparameter_raises():
    with pytest.raises(ConfigError, match=r"optim\.beta2"):
        build_optimizer(optim_cfg("adamw", beta2=0.9), tiny_model())
    with pytest.raises(ConfigError, match=r"optim\.name"):
        build_optimizer({"name": "sgdx"}, tiny_model())
