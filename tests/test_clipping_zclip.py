"""ZClip against the official `zclip` package in every mode and option, with and without the cap."""

from __future__ import annotations

import itertools

import pytest
import torch
from test_clipping_helpers import grads_of, named_params, set_grads, step_grads
from zclip import ZClip as PackageZClip

from adagc_repro.clipping import build_clipper

OPTIONS = [("zscore", "adaptive_scaling"), ("zscore", "mean"), ("percentile", "adaptive_scaling")]


class _Holder(torch.nn.Module):
    """The package takes an nn.Module; this one just holds the parameters."""

    def __init__(self, params):
        super().__init__()
        self.params = torch.nn.ParameterList(params)


@pytest.mark.parametrize(("mode", "clip_option"), OPTIONS)
@pytest.mark.parametrize(("max_grad_norm", "skip_update_on_spike", "clip_factor"),
                         [(None, False, 1.0), (1.0, False, 1.0), (None, True, 0.8), (2.0, True, 1.0)])
def test_zclip_matches_the_package(mode, clip_option, max_grad_norm, skip_update_on_spike, clip_factor):
    hparams = dict(alpha=0.9, z_thresh=1.5, max_grad_norm=max_grad_norm, eps=1e-6, warmup_steps=5, mode=mode,
                   clip_option=clip_option, clip_factor=clip_factor, skip_update_on_spike=skip_update_on_spike)
    ours, theirs = named_params(), named_params()
    package = PackageZClip(**hparams)
    holder = _Holder([p for _, p in theirs])
    clipper = build_clipper("zclip", **hparams)
    spikes = 0
    for step in range(30):
        grads = [g * (1.0 + 0.05 * step) for g in step_grads(ours, step, spike_every=5)]
        set_grads(ours, grads)
        set_grads(theirs, grads)
        stats = clipper(ours)
        package_norm = package.step(holder)
        metrics = stats.as_metrics()
        assert metrics["grad_norm"] == pytest.approx(package_norm, rel=1e-6)
        for a, b in zip(grads_of(ours), grads_of(theirs), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
        spikes += metrics["clip/zclip_spike"]
        if package.initialized:
            state = clipper.state_dict()["state"]
            assert state["mean"].item() == pytest.approx(package.mean, rel=1e-6)
            assert state["var"].item() == pytest.approx(package.var, rel=1e-5)
    assert spikes > 0  # the sequence exercises the spike branch


def test_warmup_zero_initialises_on_the_first_step_like_the_package():
    named, theirs = named_params(), named_params()
    package = PackageZClip(warmup_steps=0, max_grad_norm=None)
    clipper = build_clipper("zclip", warmup_steps=0)
    set_grads(named, step_grads(named, 0))
    set_grads(theirs, step_grads(named, 0))
    clipper(named)
    package.step(_Holder([p for _, p in theirs]))
    assert package.initialized
    assert clipper.state_dict()["state"]["mean"].item() == pytest.approx(package.mean, rel=1e-6)


def _single_tensor(norm: float):
    direction = torch.ones(4) / 2.0  # unit norm
    return [("w", torch.nn.Parameter(torch.zeros(4)))], direction * norm


def test_z5_spike_is_pulled_to_mean_plus_1_25_sigma_and_uncapped_norms_pass():
    named, _ = _single_tensor(1.0)
    clipper = build_clipper("zclip", warmup_steps=4, z_thresh=2.5, alpha=0.97, max_grad_norm=None)
    for norm in itertools.islice(itertools.cycle([1.0, 3.0]), 4):  # mean 2, population sigma 1
        _, grad = _single_tensor(norm)
        named[0][1].grad = grad.clone()
        clipper(named)
        assert named[0][1].grad.norm().item() == pytest.approx(norm)  # no cap: 3 > 1 passes
    spike = 2.0 + 5.0 * (1.0 + 1e-6)  # z = 5
    named[0][1].grad = _single_tensor(spike)[1]
    stats = clipper(named)
    metrics = stats.as_metrics()
    assert metrics["clip/z"] == pytest.approx(5.0)
    assert named[0][1].grad.norm().item() == pytest.approx(2.0 + 1.25, rel=1e-5)
    state = clipper.state_dict()["state"]
    assert state["mean"].item() == pytest.approx(0.97 * 2.0 + 0.03 * 3.25)  # the EMA takes the target


def test_package_default_preset_caps_every_step():
    named, _ = _single_tensor(1.0)
    clipper = build_clipper("zclip", warmup_steps=2, max_grad_norm=1.0)
    for norm in (1.5, 1.6, 1.55):
        named[0][1].grad = _single_tensor(norm)[1]
        clipper(named)
        assert named[0][1].grad.norm().item() == pytest.approx(1.0, rel=1e-5)
