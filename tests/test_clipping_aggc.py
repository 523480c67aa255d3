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

    def step(self, grads: list[torch.Tensor], step: int, module_sums: dict[str, float] | None = None) -> dict[str, float]:
        """`module_sums`: squared norms the released backward hooks summed over micro-batches, if used."""
        c, eps = self.cfg, 1e-12
        low_mult, high_mult = self.multipliers(step)
        scales = {}
        for mod, members in self.groups.items():
            squares = sum(grads[i].float().pow(2).sum().item() for i in members) if module_sums is None else module_sums[mod]
            norm = math.sqrt(squares + 1e-16)
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
    cfg = {**preset(stem, total_steps=steps), "norm_source": "reduced"}  # gradients set directly: no backward
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
    clipper = build_clipper("aggc", **{**preset(stem, total_steps=60), "norm_source": "reduced"})
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


class _TwoLayers(torch.nn.Module):
    """Llama-like parameter names (`layers.i.q_proj.weight`, ...) on a model small enough to backprop often."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList(torch.nn.ModuleDict({"q_proj": torch.nn.Linear(6, 6), "up_proj": torch.nn.Linear(6, 6)})
                                          for _ in range(2))
        self.lm_head = torch.nn.Linear(6, 3)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer["up_proj"](layer["q_proj"](x)))
        return self.lm_head(x).pow(2).mean()


def _accumulate(model, step: int, accum: int) -> None:
    """Backward over `accum` micro-batches of very different scale, each loss divided by accum."""
    generator = torch.Generator().manual_seed(step)
    for micro in range(accum):
        x = torch.randn(4, 6, generator=generator) * (1.0 + 3.0 * micro) * (1.0 + 0.5 * math.sin(step))
        (model(x) / accum).backward()


@pytest.mark.parametrize("stem", ["aggc_reference", "aggc_reference_grpo"])
def test_reference_presets_sum_squared_norms_of_every_micro_batch_as_released(stem):
    steps, accum = 30, 3
    cfg = preset(stem, total_steps=steps)
    assert cfg["norm_source"] == "micro_batches"
    ours, released_model, reduced_model = _TwoLayers(), _TwoLayers(), _TwoLayers()
    clipper, reduced = build_clipper("aggc", **cfg), build_clipper("aggc", **{**cfg, "norm_source": "reduced"})
    clipper.attach(ours)
    names = [name for name, _ in released_model.named_parameters()]
    released = ReleasedPerModuleClipper(cfg, _groups(list(released_model.named_parameters())))
    module_sums: dict[str, float] = {}
    for name, param in released_model.named_parameters():  # the released hooks: per-micro-batch ||g||^2, on the host
        param.register_hook(lambda g, mod=module_type(name): module_sums.__setitem__(
            mod, module_sums.get(mod, 0.0) + g.detach().float().pow(2).sum().item()))
    for step in range(steps):
        for model in (ours, released_model, reduced_model):
            model.zero_grad(set_to_none=True)
            _accumulate(model, step, accum)
        clipper(ours)
        reduced(reduced_model)
        expected = [p.grad for p in released_model.parameters()]
        released.step(expected, step, dict(module_sums))
        module_sums.clear()
        for name, got, want in zip(names, ours.parameters(), expected, strict=True):
            torch.testing.assert_close(got.grad, want, rtol=1e-5, atol=1e-9, msg=name)
    want_ema = [released.ema[g] for g in clipper.group_names]
    assert clipper.state_dict()["state"]["ema"].tolist() == pytest.approx(want_ema, rel=1e-5)
    # the norm of the accumulated gradient is another statistic: its EMAs are far from the released ones
    reduced_ema = reduced.state_dict()["state"]["ema"].tolist()
    assert all(abs(r - w) > 0.05 * w for r, w in zip(reduced_ema, want_ema, strict=True))


def test_micro_batch_norms_need_the_hooks():
    model = _TwoLayers()
    _accumulate(model, 0, 2)
    with pytest.raises(ValueError, match="attach"):
        build_clipper("aggc", **preset("aggc_reference", total_steps=10))(model)
