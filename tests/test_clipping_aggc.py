"""AGGC: grouping, a line-by-line port of the released `_clip_per_module` as oracle, and the released factor bands."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from test_clipping_helpers import CONF_DIR, grads_of, named_params, set_grads, step_grads

from adagc_repro.clipping import build_clipper
from adagc_repro.clipping.aggc import module_type
from adagc_repro.errors import ConfigError


def preset(stem: str, total_steps: int) -> dict:
    config = yaml.safe_load((CONF_DIR / f"{stem}.yaml").read_text().replace("${train.steps}", str(total_steps)))
    assert config.pop("name") == "aggc"
    return config


class ReleasedPerModuleClipper:
    """Port of the released GRPO/verl/utils/grad_clip.py rule (auto_bounds, linear schedule), Python floats."""

    def __init__(self, cfg: dict, groups: dict[str, list[int]]):
        self.cfg, self.groups = cfg, groups
        self.ema = dict.fromkeys(groups, 0.0)

    def multipliers(self, step: int):
        c = self.cfg
        base_low, base_high = c["low_mult"], c["high_mult"]
        if c["bounds_schedule"] != "linear":
            return base_low, base_high
        late_low, late_high = c["low_mult_late"], c["high_mult_late"]
        prog = max(0.0, min(1.0, float(step) / max(1, c["total_steps"])))
        s, w = c["bounds_switch_ratio"], max(1e-6, c["bounds_transition_ratio"])
        if prog <= s:
            return base_low, base_high
        if prog >= s + w:
            return late_low, late_high
        a = (prog - s) / w
        return base_low * (1 - a) + late_low * a, base_high * (1 - a) + late_high * a

    def step(self, grads: list[torch.Tensor], step: int) -> dict[str, float]:
        c, eps = self.cfg, 1e-12
        low_mult, high_mult = self.multipliers(step)
        scales = {}
        for mod, members in self.groups.items():
            norm = math.sqrt(sum(grads[i].float().pow(2).sum().item() for i in members) + 1e-16)
            lower = max(c["min_norm"], self.ema[mod] * low_mult)
            upper = max(0.0, self.ema[mod] * high_mult)
            scale = 1.0
            if upper > 0.0 and norm > upper + eps:
                scale = upper / (norm + eps)
                if c["max_down_scale"] > 0.0:
                    scale = max(scale, c["max_down_scale"])
            elif c["raise_small"] and lower > 0.0 and norm < lower - eps:
                scale = lower / (norm + eps) if norm > 0 else 1.0
                if c["max_up_scale"] > 0.0:
                    scale = min(scale, c["max_up_scale"])
            for i in members:
                grads[i].mul_(scale)
            self.ema[mod] = c["beta"] * self.ema[mod] + (1.0 - c["beta"]) * norm * scale
            scales[mod] = scale
        return scales


def test_groups_are_module_types_across_layers():
    assert module_type("model.layers.3.self_attn.q_proj.weight") == "q_proj"
    assert module_type("model.layers.0.mlp.down_proj.weight") == "down_proj"
    assert module_type("transformer.h.1.mlp.c_proj.weight") == "c_proj"
    assert module_type("model.layers.2.input_layernorm.weight") == "input_layernorm"
    assert module_type("model.embed_tokens.weight") == "embed_tokens"
    assert module_type("lm_head.weight") == "lm_head"
    assert module_type("model.norm.weight") == "norm"
    assert module_type("scale") is None
    clipper = build_clipper("aggc")
    clipper([(n, p) for n, p in named_params()])
    assert clipper.group_names == ("embed_tokens", "q_proj", "k_proj", "up_proj", "input_layernorm", "norm", "lm_head")


def _groups(named) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, (name, _) in enumerate(named):
        groups.setdefault(module_type(name), []).append(i)
    return groups


@pytest.mark.parametrize("stem", ["aggc_reference", "aggc_reference_grpo", "aggc"])
def test_aggc_matches_the_released_rule_step_by_step(stem):
    steps = 40
    cfg = preset(stem, total_steps=steps)
    named = named_params()
    released = ReleasedPerModuleClipper({**cfg, "low_mult_late": cfg["low_mult_late"] or cfg["low_mult"],
                                         "high_mult_late": cfg["high_mult_late"] or cfg["high_mult"]}, _groups(named))
    clipper = build_clipper("aggc", **cfg)
    for step in range(steps):
        grads = [g * (1.0 + 0.5 * math.sin(step / 3)) for g in step_grads(named, step)]
        set_grads(named, grads)
        clipper(named)
        expected = [g.clone() for g in grads]
        released.step(expected, step)  # the released code passes the number of completed steps
        for got, want in zip(grads_of(named), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)
    ema = clipper.state_dict()["state"]["ema"]
    assert ema.tolist() == pytest.approx([released.ema[g] for g in clipper.group_names], rel=1e-5)


@pytest.mark.parametrize(("stem", "band", "raises"), [("aggc_reference", (0.9, 1.0), False),
                                                      ("aggc_reference_grpo", (0.9, 1.1), True)])
def test_released_presets_scale_every_group_within_their_band(stem, band, raises):
    named = named_params()
    clipper = build_clipper("aggc", **preset(stem, total_steps=60))
    low, high = [], []
    for step in range(60):
        set_grads(named, [g * (1.0 + 0.8 * math.sin(step / 2)) for g in step_grads(named, step)])
        coefs = clipper(named).coefs
        low.append(coefs.min().item())
        high.append(coefs.max().item())
    assert min(low) == pytest.approx(band[0]) and max(high) <= band[1] + 1e-6
    assert (max(high) > 1.0) == raises


def test_general_rule_checks_the_band_and_schedule():
    with pytest.raises(ConfigError, match=r"clip\.high_mult"):
        build_clipper("aggc", low_mult=0.95, high_mult=0.6)
    with pytest.raises(ConfigError, match=r"clip\.total_steps"):
        build_clipper("aggc", bounds_schedule="linear")
    with pytest.raises(ConfigError, match=r"clip\.max_up_scale"):
        build_clipper("aggc", max_up_scale=0.5)


def test_raise_small_may_increase_norms_but_never_past_the_cap():
    named = named_params()
    clipper = build_clipper("aggc", beta=0.5, low_mult=1.0, high_mult=1.5, raise_small=True, max_up_scale=1.1)
    for step in range(10):
        scale = 1.0 if step < 6 else 0.2  # a sudden drop below the lower bound
        set_grads(named, [g * scale for g in step_grads(named, step, spike_every=0)])
        stats = clipper(named)
    assert stats.coefs.max().item() == pytest.approx(1.1)
    assert stats.as_metrics()["clip/aggc_frac_raised"] > 0
