"""`local` (fixed per-tensor threshold) and `adagc_global` (the official code's GlobalAdaGC)."""

from __future__ import annotations

import math

import pytest
import torch
from test_clipping_helpers import grads_of, named_params, set_grads, step_grads

from adagc_repro.clipping import build_clipper


def test_local_clips_each_tensor_to_max_norm():
    named = named_params()
    grads = step_grads(named, 0)
    set_grads(named, grads)
    stats = build_clipper("local", max_norm=0.5)(named)
    for g, after in zip(grads, grads_of(named), strict=True):
        expected = g * min(1.0, 0.5 / (g.norm().item() + 1e-6))
        torch.testing.assert_close(after, expected)
    clipped = sum(g.norm().item() > 0.5 for g in grads)
    assert stats.as_metrics()["clip/frac_clipped"] == pytest.approx(clipped / len(grads))


def global_adagc_loop(totals, *, lambda_rel, beta, warmup_steps, lambda_abs, eps):
    """The official GlobalAdaGC.clip_by_norm on a sequence of global norms: the coefficient of each step."""
    gamma, coefs = None, []
    for step, total in enumerate(totals, start=1):
        if step <= warmup_steps:
            coef = lambda_abs / (total + eps)
            coefs.append(min(coef, 1.0))
            clipped = min(total, lambda_abs)
            gamma = clipped if gamma is None else min(gamma, clipped)
        else:
            gamma = total if gamma is None else gamma
            coef = 1.0
            if total > lambda_rel * gamma:
                coef = lambda_rel * gamma / (total + eps)
                total = lambda_rel * gamma
            coefs.append(coef)
            gamma = gamma * beta + total * (1 - beta)
    return coefs, gamma


def test_adagc_global_matches_the_official_rule():
    hparams = dict(lambda_rel=1.04, beta=0.9, warmup_steps=4, lambda_abs=1.0, eps=1e-6)
    named = named_params()
    steps = [[g * (0.2 + 0.1 * s) for g in step_grads(named, s)] for s in range(20)]
    totals = [math.sqrt(sum(g.norm().item() ** 2 for g in grads)) for grads in steps]
    coefs, gamma = global_adagc_loop(totals, **hparams)
    clipper = build_clipper("adagc_global", **hparams)
    for grads, coef in zip(steps, coefs, strict=True):
        set_grads(named, grads)
        stats = clipper(named)
        assert stats.as_metrics()["clip/min_coef"] == pytest.approx(coef, rel=1e-5)
        for g, after in zip(grads, grads_of(named), strict=True):
            torch.testing.assert_close(after, g * coef, rtol=1e-5, atol=1e-8)
    assert clipper.state_dict()["state"]["gamma"].item() == pytest.approx(gamma, rel=1e-5)
    assert any(c < 1 for c in coefs[4:])  # the adaptive branch clipped at least once
