"""AGC against pytorch-optimizer's `agc`, AutoClip against its numpy reference loop, skip_step against OLMo-core's rule."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from test_clipping_helpers import grads_of, named_params, set_grads, step_grads

from adagc_repro.clipping import build_clipper


def test_agc_matches_pytorch_optimizer_and_skips_the_lm_head():
    from pytorch_optimizer import agc

    shapes = {"model.conv.weight": (4, 3, 2, 2), "model.experts.w": (2, 5, 3), "model.layers.0.mlp.up_proj.weight": (6, 4),
              "model.layers.0.mlp.up_proj.bias": (6,), "model.scale": (), "lm_head.weight": (7, 4)}
    named = named_params(shapes=shapes)
    clipper = build_clipper("agc", clip_val=0.05)
    for step in range(3):
        grads = step_grads(named, step)
        set_grads(named, grads)
        stats = clipper(named)
        for (name, p), g, got in zip(named, grads, grads_of(named), strict=True):
            want = g if name == "lm_head.weight" else agc(p.detach(), g, agc_eps=1e-3, agc_clip_val=0.05, eps=1e-6)
            assert torch.equal(got, want), name
        assert stats.as_metrics()["clip/frac_clipped"] > 0
    assert stats.coefs[-1].item() == 1.0


def autoclip_loop(grad_steps, params, percentile):
    """The AutoClip reference: append the norm, take np.percentile of the history, clip_grad_norm_ to it."""
    history, out = [], []
    for grads in grad_steps:
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        history.append(sum(p.grad.norm(2).item() ** 2 for p in params) ** 0.5)
        torch.nn.utils.clip_grad_norm_(params, float(np.percentile(history, percentile)))
        out.append([p.grad.clone() for p in params])
    return out


@pytest.mark.parametrize("percentile", [10.0, 50.0, 90.0])
def test_autoclip_matches_the_reference_loop(percentile):
    named = named_params()
    steps = [step_grads(named, s) for s in range(30)]
    expected = autoclip_loop(steps, [p for _, p in named_params()], percentile)
    clipper = build_clipper("autoclip", percentile=percentile)
    for grads, want in zip(steps, expected, strict=True):
        set_grads(named, grads)
        clipper(named)
        for got, ref in zip(grads_of(named), want, strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-8)


def test_autoclip_history_grows_past_its_initial_capacity(monkeypatch):
    from adagc_repro.clipping import autoclip

    monkeypatch.setattr(autoclip, "INITIAL_CAPACITY", 16)  # grows to 64, 256 and 1024
    named = named_params(shapes={"w": (3,)})
    clipper = build_clipper("autoclip", percentile=50.0)
    for step in range(300):
        named[0][1].grad = torch.full((3,), float(step + 1))
        stats = clipper(named)
    assert clipper.state_dict()["state"]["history"].numel() == 1024
    assert stats.as_metrics()["clip/autoclip_threshold"] == pytest.approx(np.percentile(np.arange(1, 301) * 3**0.5, 50))


def olmo_skip_flags(losses, grad_norms, window, sigma, two_sided=False):
    """OLMo-core SkipStepOptimizer: windows of window + 1 values, sample std over all but the newest;
    it steps while x - mean <= sigma * std (one-sided); `two_sided` tests |x - mean| instead."""
    side = abs if two_sided else (lambda x: x)
    kept_losses, kept_norms, flags = collections.deque(maxlen=window + 1), collections.deque(maxlen=window + 1), []
    for loss, norm in zip(losses, grad_norms, strict=True):
        kept_losses.append(loss)
        kept_norms.append(norm)
        if len(kept_losses) < max(20, window // 2):
            flags.append(False)
            continue
        std_l, mean_l = torch.std_mean(torch.tensor(list(kept_losses)[:-1]))
        std_n, mean_n = torch.std_mean(torch.tensor(list(kept_norms)[:-1]))
        flags.append(bool(side(loss - mean_l) > sigma * std_l or side(norm - mean_n) > sigma * std_n))
    return flags


@pytest.mark.parametrize("two_sided", [False, True])
def test_skip_step_matches_olmo_core_rule(two_sided):
    window, sigma = 24, 3.0
    named = named_params()
    generator = torch.Generator().manual_seed(0)
    losses = (3.0 + 0.05 * torch.randn(80, generator=generator)).tolist()
    losses[50] = 6.0  # loss spike
    losses[40] = 1.0  # sharp drop: a spike only for the two-sided rule
    options = {"two_sided": True} if two_sided else {}  # one-sided by default
    clipper = build_clipper("skip_step", rolling_interval_length=window, sigma_factor=sigma, **options)
    flags, norms, reasons = [], [], []
    for step, loss in enumerate(losses):
        grads = step_grads(named, step, spike_every=0)
        if step == 65:
            grads[2] = grads[2] * 30  # grad-norm spike
        set_grads(named, grads)
        stats = clipper(named, loss=torch.tensor(loss))
        flags.append(bool(stats.skipped))
        reasons.append(stats.skip_reason)
        norms.append(stats.as_metrics()["grad_norm"])
        assert torch.equal(named[2][1].grad, grads[2])  # skip_step never rescales without max_norm
    assert flags == olmo_skip_flags(losses, norms, window, sigma, two_sided)
    assert flags[50] and flags[65] and not any(flags[:19])
    assert flags[40] == two_sided
    assert {reasons[50], reasons[65]} == {"spike"} and reasons[10] is None


def test_skip_step_needs_the_loss():
    named = named_params()
    set_grads(named, step_grads(named, 0))
    with pytest.raises(ValueError, match="loss"):
        build_clipper("skip_step")(named)


def test_autoclip_resumed_before_its_history_grows_continues_bit_exactly(monkeypatch):
    from adagc_repro.clipping import autoclip

    monkeypatch.setattr(autoclip, "INITIAL_CAPACITY", 4)  # grows before the 5th and the 17th norm
    named = named_params()
    original = build_clipper("autoclip", percentile=50.0)
    for step in range(3):
        set_grads(named, step_grads(named, step))
        original(named)
    restored = build_clipper("autoclip", percentile=50.0)
    restored.load_state_dict(original.state_dict())
    thresholds = {id(original): [], id(restored): []}
    for step in range(3, 20):
        for clipper in (original, restored):
            set_grads(named, step_grads(named, step))
            thresholds[id(clipper)].append(clipper(named).as_metrics()["clip/autoclip_threshold"])
    assert thresholds[id(original)] == thresholds[id(restored)]
    history = restored.state_dict()["state"]["history"]
    assert history.numel() == 64 and torch.equal(history, original.state_dict()["state"]["history"])
