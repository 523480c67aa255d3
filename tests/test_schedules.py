"""LR schedules: warm-up, decay shapes, floors, config validation, LambdaLR state round trip."""

from __future__ import annotations

import math

import pytest
import torch

from adagc_repro.errors import ConfigError
from adagc_repro.optim import SCHEDULES, build_schedule


def multipliers(cfg: dict, total: int) -> list[float]:
    name = cfg["name"]
    fn = SCHEDULES.build(name, total, **{k: v for k, v in cfg.items() if k != "name"})
    return [fn(step) for step in range(total)]


def test_cosine_warmup_peak_and_floor():
    m = multipliers({"name": "cosine", "warmup_steps": 10, "min_lr_ratio": 0.1}, 110)
    assert m[0] == pytest.approx(0.1) and m[9] == pytest.approx(1.0)
    assert m[10] == pytest.approx(1.0)
    assert m[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert m[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(m[10:], m[11:], strict=False))


def test_wsd_is_flat_then_decays_over_last_fraction():
    m = multipliers({"name": "wsd", "warmup_steps": 5, "decay_fraction": 0.2, "min_lr_ratio": 0.0}, 100)
    assert m[4] == pytest.approx(1.0)
    assert all(x == 1.0 for x in m[5:80])
    assert m[90] == pytest.approx(0.5)
    assert m[99] == pytest.approx(0.05)


def test_linear_and_constant():
    lin = multipliers({"name": "linear", "warmup_steps": 0, "min_lr_ratio": 0.0}, 10)
    assert lin == pytest.approx([1 - i / 10 for i in range(10)])
    const = multipliers({"name": "constant", "warmup_steps": 4}, 10)
    assert const == pytest.approx([0.25, 0.5, 0.75] + [1.0] * 7)


def test_bad_schedule_config_raises():
    with pytest.raises(ConfigError, match=r"schedule\.min_lr_ratio"):
        multipliers({"name": "cosine", "min_lr_ratio": 2.0}, 10)
    with pytest.raises(ConfigError, match=r"schedule\.decay_type"):
        multipliers({"name": "wsd", "decay_type": "exp"}, 10)
    with pytest.raises(ConfigError, match=r"schedule\.warmup"):
        multipliers({"name": "cosine", "warmup": 3}, 10)


def test_lambda_lr_scales_groups_and_round_trips():
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.SGD([{"params": [params[0]], "lr": 1.0}, {"params": [params[1]], "lr": 0.1}])
    cfg = {"name": "cosine", "warmup_steps": 2, "min_lr_ratio": 0.0}
    sched = build_schedule(cfg, opt, 10)
    for _ in range(4):
        opt.step()
        sched.step()
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs[1] == pytest.approx(lrs[0] * 0.1)
    opt2 = torch.optim.SGD([{"params": [params[0]], "lr": 1.0}, {"params": [params[1]], "lr": 0.1}])
    sched2 = build_schedule(cfg, opt2, 10)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    for s in (sched, sched2):
        s.optimizer.step()
        s.step()
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx([g["lr"] for g in opt.param_groups])
