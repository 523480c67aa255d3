"""`global` against torch.nn.utils.clip_grad_norm_ (bit-exact), and `none`."""

from __future__ import annotations

import pytest
import torch
from test_clipping_helpers import grads_of, named_params, set_grads, step_grads

from adagc_repro.clipping import build_clipper


@pytest.mark.parametrize("max_norm", [0.05, 1.0, 1e3])
def test_global_equals_clip_grad_norm_bit_exactly(max_norm):
    ours, theirs = named_params(), named_params()
    clipper = build_clipper("global", max_norm=max_norm)
    for step in range(6):
        grads = step_grads(ours, step)
        grads[4] = None if step == 2 else grads[4]
        set_grads(ours, grads)
        set_grads(theirs, grads)
        stats = clipper(ours)
        total = torch.nn.utils.clip_grad_norm_([p for _, p in theirs], max_norm, foreach=True)
        assert torch.equal(stats.global_norm_pre, total)
        for a, b in zip(grads_of(ours), grads_of(theirs), strict=True):
            assert (a is None and b is None) or torch.equal(a, b)


def test_global_reports_coefficient_and_post_norm():
    named = named_params()
    set_grads(named, step_grads(named, 0))
    stats = build_clipper("global", max_norm=0.5)(named)
    metrics = stats.as_metrics()
    assert metrics["clip/frac_clipped"] == 1.0
    assert metrics["clip/min_coef"] == pytest.approx(0.5 / metrics["grad_norm"], rel=1e-5)
    assert metrics["grad_norm_post"] == pytest.approx(0.5, rel=1e-5)


def test_bf16_gradients_use_fp32_norms():
    named = named_params()
    grads = [g.to(torch.bfloat16) for g in step_grads(named, 0)]
    for (_, p), g in zip(named, grads, strict=True):
        p.data = p.data.to(torch.bfloat16)
        p.grad = g.clone()
    stats = build_clipper("global", max_norm=0.5)(named)
    exact = torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads]))
    assert stats.global_norm_pre.dtype == torch.float32
    assert torch.allclose(stats.global_norm_pre, exact, rtol=1e-6)
    assert all(p.grad.dtype == torch.bfloat16 for _, p in named)


def test_none_leaves_gradients_alone_and_logs_the_norm():
    named = named_params()
    grads = step_grads(named, 3)
    set_grads(named, grads)
    stats = build_clipper("none")(named)
    assert all(torch.equal(a, b) for a, b in zip(grads_of(named), grads, strict=True))
    metrics = stats.as_metrics()
    assert metrics["grad_norm"] == pytest.approx(metrics["grad_norm_post"])
    assert metrics["clip/frac_clipped"] == 0.0 and metrics["clip/min_coef"] == 1.0
