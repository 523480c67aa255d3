"""Optimizers against reference packages and hand computations; Muon routing and the hybrid object."""

from __future__ import annotations

import lion_pytorch
import optimi
import pytest
import torch
from test_optim_helpers import TINY_LLAMA

from adagc_repro.models import build_model, forward_loss
from adagc_repro.optim import build_optimizer, build_schedule
from adagc_repro.optim.clippy_adamw import ClippyAdamW
from adagc_repro.optim.lion import Lion, lion_from_adamw
from adagc_repro.optim.muon import MuonWithAdamW, muon_param_names
from adagc_repro.optim.stable_adamw import StableAdamW


def twin_params(seed: int = 0) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(8, 5), (5,), (3, 4, 2)]
    base = [torch.randn(s, generator=g) for s in shapes]
    return [torch.nn.Parameter(t.clone()) for t in base], [torch.nn.Parameter(t.clone()) for t in base]


def run_twins(ours, theirs, params_a, params_b, steps: int, spike_at: int | None = None):
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        grads = [torch.randn(p.shape, generator=g) * (30.0 if step == spike_at else 1.0) for p in params_a]
        for params, opt in ((params_a, ours), (params_b, theirs)):
            for p, grad in zip(params, grads, strict=True):
                p.grad = grad.clone()
            opt.step()


def test_stableadamw_matches_torch_optimi():
    ours_p, ref_p = twin_params()
    ours = StableAdamW(
        ours_p, lr=1e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.1, decay_uses_clipped_lr=True
    )
    ref = optimi.StableAdamW(ref_p, lr=1e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.1, foreach=False)
    run_twins(ours, ref, ours_p, ref_p, steps=8, spike_at=5)  # the spike drives RMS > 1 (clipped)
    for a, b in zip(ours_p, ref_p, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_stableadamw_lr_is_lr_over_rms_only_when_rms_exceeds_one():
    # Step 1: v = g², so RMS = 1 and the step is lr·sign(g)-like. Step 2 with g₂ = 10·g₁ makes
    # v = 0.99/1.99·g₁² + 1/1.99·g₂²-style mix: RMS = √(g₂²/v) > 1 and η = lr/RMS.
    p = torch.nn.Parameter(torch.zeros(4))
    opt = StableAdamW([p], lr=0.1, betas=(0.9, 0.99), eps=0.0, weight_decay=0.0)
    g1 = torch.tensor([1.0, -2.0, 0.5, 3.0])
    p.grad = g1.clone()
    opt.step()
    torch.testing.assert_close(p.detach(), -0.1 * torch.sign(g1))
    before = p.detach().clone()
    p.grad = 10 * g1
    opt.step()
    b1, b2 = 0.9 * 0.1 / 0.19, 0.99 * 0.01 / 0.0199  # debiased betas at t = 2
    m = b1 * g1 + (1 - b1) * 10 * g1
    v = b2 * g1**2 + (1 - b2) * 100 * g1**2
    rms = torch.sqrt(torch.mean(100 * g1**2 / v))
    assert rms > 1
    torch.testing.assert_close(p.detach(), before - 0.1 / rms * m / v.sqrt())


def test_lion_matches_lion_pytorch_and_scaling_rule():
    ours_p, ref_p = twin_params()
    ours = Lion(ours_p, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.3)
    ref = lion_pytorch.Lion(ref_p, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.3)
    run_twins(ours, ref, ours_p, ref_p, steps=6)
    for a, b in zip(ours_p, ref_p, strict=True):
        torch.testing.assert_close(a, b)
    assert lion_from_adamw(1e-3, 0.1, factor=10) == pytest.approx((1e-4, 1.0))


def test_clippy_scales_each_tensor_update_to_its_bound():
    # First Adam step moves every coordinate by ≈ lr; bounds 0.1·|w| allow only 0.1·min|w| here.
    w = torch.nn.Parameter(torch.tensor([1.0, 0.01, -0.5]))
    free = torch.nn.Parameter(torch.tensor([100.0, 100.0]))
    opt = ClippyAdamW([w, free], lr=0.1, eps=0.0, variable_relative_threshold=0.1, absolute_threshold=1e-7)
    w.grad, free.grad = torch.tensor([1.0, 1.0, -1.0]), torch.tensor([1.0, -1.0])
    opt.step()
    sigma = (0.1 * 0.01 + 1e-7) / 0.1
    torch.testing.assert_close(
        w.detach(), torch.tensor([1.0, 0.01, -0.5]) - sigma * 0.1 * torch.tensor([1.0, 1.0, -1.0])
    )
    torch.testing.assert_close(free.detach(), torch.tensor([99.9, 100.1]))  # within bound: plain AdamW


def test_muon_routes_hidden_matrices_and_only_those():
    model = build_model(TINY_LLAMA)
    opt = build_optimizer({"name": "muon"}, model)
    assert isinstance(opt, MuonWithAdamW)
    by_id = {id(p): n for n, p in model.named_parameters()}
    routed = {by_id[id(p)] for g in opt.muon.param_groups for p in g["params"]}
    expected = {
        n
        for n, p in model.named_parameters()
        if p.ndim == 2 and "embed_tokens" not in n and n != "lm_head.weight"
    }
    assert routed == expected == set(muon_param_names(model))
    assert all(n.endswith("_proj.weight") for n in routed)
    rest = {by_id[id(p)] for g in opt.adamw.param_groups for p in g["params"]}
    assert rest == {n for n, _ in model.named_parameters()} - routed
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= rest


def test_muon_hybrid_is_one_optimizer_under_one_schedule():
    model = build_model(TINY_LLAMA)
    opt = build_optimizer({"name": "muon", "lr": 0.02, "adamw_lr": 3e-4, "adjust_lr_fn": "original"}, model)
    sched = build_schedule({"name": "cosine", "warmup_steps": 2, "min_lr_ratio": 0.0}, opt, 10)
    batch = {"input_ids": torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(0))}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(3):
        opt.zero_grad()
        forward_loss(model, batch)[0].backward()
        opt.step()
        sched.step()
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
    lrs = {g["optimizer"]: g["lr"] for g in opt.param_groups}
    assert lrs["muon"] / lrs["adamw"] == pytest.approx(0.02 / 3e-4)
    assert opt.muon.param_groups[0] is opt.param_groups[0]  # shared, so the schedule reaches Muon
    assert all(p.grad is not None for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
