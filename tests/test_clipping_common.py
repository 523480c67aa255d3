"""Contract every registered clipper must honour: non-finite steps, missing gradients, metrics, state round trips."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from test_clipping_helpers import (
    CONF_DIR,
    CONFIGS,
    assert_same_state,
    build,
    named_params,
    run,
    set_grads,
    step_grads,
)

from adagc_repro.clipping import CLIPPERS, ClipStats, build_clipper
from adagc_repro.errors import ConfigError


def test_every_registered_clipper_is_covered():
    assert set(CONFIGS) == set(CLIPPERS.names())


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_gradient_skips_and_changes_nothing(name, bad):
    named = named_params()
    clipper = build(name)
    run(clipper, named, 6)
    before = clipper.state_dict()
    grads = step_grads(named, 6)
    grads[3][0, 0] = bad
    set_grads(named, grads)
    stats = clipper(named, loss=torch.tensor(2.0))
    assert bool(stats.skipped) and stats.skip_reason == "nonfinite"
    for (_, p), g in zip(named, grads, strict=True):
        assert torch.equal(p.grad.isnan(), g.isnan())
        assert torch.equal(torch.nan_to_num(p.grad), torch.nan_to_num(g))
    assert_same_state(before, clipper.state_dict())
    metrics = stats.as_metrics()
    assert metrics["grad_norm"] is None and metrics["grad_norm_post"] is None
    # the next finite step continues as if the bad step never happened
    fresh = build(name)
    run(fresh, named, 6)
    assert run(clipper, named, 3, start=7)[-1]["metrics"] == run(fresh, named, 3, start=7)[-1]["metrics"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_first_step_missing_grads_and_metrics(name):
    named = named_params()
    clipper = build(name)
    assert not bool(clipper(named, loss=1.0).skipped)  # no gradients at all: nothing to do
    grads = step_grads(named, 0)
    grads[2] = None
    set_grads(named, grads)
    stats = clipper(named, loss=1.0)
    assert isinstance(stats, ClipStats) and not bool(stats.skipped) and stats.skip_reason is None
    assert named[2][1].grad is None
    metrics = stats.as_metrics()
    for key in ("grad_norm", "grad_norm_post", "clip/frac_clipped", "clip/min_coef", "clip/mean_coef"):
        assert isinstance(metrics[key], float), key
    assert metrics["grad_norm_post"] <= metrics["grad_norm"] * (1 + 1e-6)
    json.dumps(metrics)
    report = clipper.telemetry(stats, top_k=3)
    json.dumps(report)
    assert len(report["top"]) == 3 and {"0", "1", "other"} <= set(report["layers"])


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(sorted(CONFIGS)), seed=st.integers(0, 20), scale=st.floats(1e-3, 1e3))
def test_clipping_never_increases_a_norm(name, seed, scale):
    """AGGC with raise_small is the one strategy allowed to scale up; it is off in CONFIGS."""
    named = named_params(seed)
    clipper = build(name)
    for step in range(8):
        grads = [g * scale for g in step_grads(named, step, seed)]
        set_grads(named, grads)
        clipper(named, loss=torch.tensor(2.0))
        for (_, p), g in zip(named, grads, strict=True):
            assert p.grad.norm() <= g.norm() * (1 + 1e-6)


@settings(max_examples=15, deadline=None)
@given(name=st.sampled_from(sorted(CONFIGS)), split=st.integers(0, 9), seed=st.integers(0, 3))
def test_state_round_trip_mid_stream_is_bit_exact(name, split, seed):
    named = named_params(seed)
    original = build(name)
    run(original, named, split, seed)
    restored = build(name)
    restored.load_state_dict(original.state_dict())
    after_original = run(original, named, 6, seed, start=split)
    after_restored = run(restored, named, 6, seed, start=split)
    for a, b in zip(after_original, after_restored, strict=True):
        assert a["metrics"] == b["metrics"]
        assert all(torch.equal(x, y) for x, y in zip(a["grads"], b["grads"], strict=True))
    assert_same_state(original.state_dict(), restored.state_dict())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_dict_survives_torch_save(name, tmp_path):
    named = named_params()
    clipper = build(name)
    run(clipper, named, 5)
    torch.save(clipper.state_dict(), tmp_path / "clip.pt")
    restored = build(name)
    restored.load_state_dict(torch.load(tmp_path / "clip.pt"))
    assert run(restored, named, 3, start=5)[-1]["metrics"] == run(clipper, named, 3, start=5)[-1]["metrics"]


def test_state_for_other_parameters_is_rejected():
    clipper = build("adagc")
    run(clipper, named_params(), 2)
    other = build("adagc")
    other.load_state_dict(clipper.state_dict())
    smaller = named_params(shapes={"a.weight": (3, 3)})
    set_grads(smaller, [torch.ones(3, 3)])
    with pytest.raises(ValueError, match="other parameters"):
        other(smaller)


def test_module_input_and_cached_binding():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[1].bias.requires_grad_(False)
    clipper = build_clipper("global", max_norm=0.01)
    for _ in range(2):
        model.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        stats = clipper(model)
        assert stats.names == ("0.weight", "0.bias", "1.weight")
        assert math.isclose(stats.as_metrics()["grad_norm_post"], 0.01, rel_tol=1e-4)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"clip\.name"):
        build_clipper("no_such_clipper")
    with pytest.raises(ConfigError, match=r"clip\.max_nrom"):
        build_clipper("global", max_nrom=1.0)
    with pytest.raises(ConfigError, match=r"clip\.max_norm"):
        build_clipper("global", max_norm=-1.0)
    with pytest.raises(ConfigError, match=r"clip\.beta"):
        build_clipper("adagc", beta=1.0)
    with pytest.raises(ConfigError, match=r"clip\.warmup_steps"):
        build_clipper("adagc", warmup_steps=2.5)


def _yaml_configs():
    return sorted(CONF_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", _yaml_configs(), ids=lambda p: p.stem)
def test_conf_files_list_every_hyperparameter_and_build(path):
    config = yaml.safe_load(path.read_text().replace("${train.steps}", "100"))
    name = config.pop("name")
    assert set(config) == set(CLIPPERS.hyperparameters(name))
    build_clipper(name, **config)


def test_one_conf_file_per_strategy():
    stems = {p.stem for p in _yaml_configs()}
    assert set(CLIPPERS.names()) <= stems
