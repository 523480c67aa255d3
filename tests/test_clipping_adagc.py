"""AdaGC against a plain per-tensor loop of Algorithm 1, pytorch-optimizer's AdaGC, and the spec's edge cases."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_clipping_helpers import grads_of, named_params, set_grads, step_grads

from adagc_repro.clipping import build_clipper


def algorithm1_loop(grad_steps, *, lambda_rel, beta, warmup_steps, lambda_abs, eps, warmup_norm):
    """Algorithm 1 with the official PyTorch warm-up, one tensor at a time (plus the zero-norm guard)."""
    gamma: dict[int, float] = {}
    clipped_steps = []
    for step, grads in enumerate(grad_steps, start=1):
        grads = [g.clone() for g in grads]
        if step <= warmup_steps:
            raw = [g.norm().item() for g in grads]
            total = math.sqrt(sum(n * n for n in raw))
            coef = lambda_abs / (total + eps)
            if coef < 1.0:
                grads = [g * coef for g in grads]
            for i, g in enumerate(grads):
                norm = g.norm().item() if warmup_norm == "clipped" else raw[i]
                if norm > 0:
                    gamma[i] = min(gamma.get(i, norm), norm)
        else:
            for i, g in enumerate(grads):
                norm = g.norm().item()
                if norm == 0:
                    continue
                gamma.setdefault(i, norm)
                threshold = lambda_rel * gamma[i]
                if norm > threshold:
                    grads[i] = g * (threshold / (norm + eps))
                    norm = threshold
                gamma[i] = beta * gamma[i] + (1 - beta) * norm
        clipped_steps.append(grads)
    return clipped_steps, gamma


@pytest.mark.parametrize(
    "hparams",
    [
        dict(lambda_rel=1.04, beta=0.99, warmup_steps=5, lambda_abs=1.0, eps=1e-6, warmup_norm="clipped"),
        dict(lambda_rel=1.05, beta=0.9, warmup_steps=3, lambda_abs=0.5, eps=1e-6, warmup_norm="raw"),
        dict(lambda_rel=1.02, beta=0.98, warmup_steps=0, lambda_abs=1.0, eps=1e-8, warmup_norm="clipped"),
    ],
)
def test_adagc_matches_the_plain_loop(hparams):
    named = named_params()
    steps = [step_grads(named, s) for s in range(24)]
    steps[2][5] = torch.zeros_like(steps[2][5])  # a zero-gradient tensor inside the warm-up
    expected, gamma = algorithm1_loop(steps, **hparams)
    clipper = build_clipper("adagc", **hparams)
    for grads, want in zip(steps, expected, strict=True):
        set_grads(named, grads)
        clipper(named)
        for got, ref in zip(grads_of(named), want, strict=True):
            torch.testing.assert_close(got, ref, rtol=2e-5, atol=1e-7)
    got_gamma = clipper.state_dict()["state"]["gamma"].double()
    torch.testing.assert_close(got_gamma, torch.tensor([gamma[i] for i in range(len(named))], dtype=torch.float64),
                               rtol=2e-5, atol=0)


def test_warmup_lasts_exactly_warmup_steps_and_gamma_is_the_running_min():
    named = named_params()
    clipper = build_clipper("adagc", warmup_steps=4, lambda_abs=1.0)
    post_norms = []
    for step in range(5):
        set_grads(named, [g * 10 for g in step_grads(named, step, spike_every=0)])  # global clip active
        stats = clipper(named)
        warm = stats.as_metrics()["clip/adagc_warmup"]
        assert warm == (1.0 if step < 4 else 0.0)
        if step < 4:
            assert stats.as_metrics()["grad_norm_post"] == pytest.approx(1.0, rel=1e-5)
            post_norms.append(torch.stack([p.grad.norm() for _, p in named]))
            torch.testing.assert_close(clipper.state_dict()["state"]["gamma"], torch.stack(post_norms).amin(0))


def test_spike_after_warmup_is_clipped_to_lambda_rel_gamma_and_nothing_else_moves():
    named = named_params()
    clipper = build_clipper("adagc", warmup_steps=3, lambda_rel=1.04, beta=0.99)
    base = step_grads(named, 0, spike_every=0)
    total = torch.linalg.vector_norm(torch.stack([g.norm() for g in base]))
    base = [g * (0.5 / total) for g in base]  # below lambda_abs: warm-up leaves it alone, gamma = its norms
    for _ in range(6):
        set_grads(named, base)
        clipper(named)
    gamma = clipper.state_dict()["state"]["gamma"].clone()
    spiked = [g.clone() for g in base]
    spiked[3] *= 10
    set_grads(named, spiked)
    stats = clipper(named)
    after = grads_of(named)
    assert after[3].norm().item() == pytest.approx(1.04 * gamma[3].item(), rel=1e-5)
    # the unspiked tensors sit at their steady state, below lambda_rel * gamma: untouched
    assert all(torch.equal(a, b) for i, (a, b) in enumerate(zip(after, spiked, strict=True)) if i != 3)
    new_gamma = clipper.state_dict()["state"]["gamma"]
    # the EMA takes the clipped norm lambda_rel * gamma, not the raw spike
    assert new_gamma[3].item() == pytest.approx(0.99 * gamma[3].item() + 0.01 * 1.04 * gamma[3].item(), rel=1e-6)
    assert stats.as_metrics()["clip/frac_clipped"] == pytest.approx(1 / len(named))


def test_zero_gradient_in_warmup_does_not_freeze_the_tensor():
    named = named_params()
    clipper = build_clipper("adagc", warmup_steps=3)
    for step in range(3):
        grads = step_grads(named, step, spike_every=0)
        grads[1] = torch.zeros_like(grads[1]) if step == 1 else grads[1]
        set_grads(named, grads)
        clipper(named)
    gamma = clipper.state_dict()["state"]["gamma"][1].item()
    assert gamma > 0.01  # the zero step left gamma at the min of the other steps' norms, not at 0
    set_grads(named, step_grads(named, 3, spike_every=0))
    clipper(named)
    assert named[1][1].grad.norm().item() == pytest.approx(1.04 * gamma, rel=1e-5)


def test_tensor_first_seen_after_warmup_starts_from_its_norm():
    named = named_params()
    clipper = build_clipper("adagc", warmup_steps=2)
    for step in range(4):
        grads = step_grads(named, step, spike_every=0)
        if step < 3:
            grads[0] = None  # e.g. an embedding row set that only starts receiving gradient later
        set_grads(named, grads)
        clipper(named)
    state = clipper.state_dict()["state"]
    assert bool(state["seen"][0])
    assert state["gamma"][0].item() == pytest.approx(grads[0].norm().item(), rel=1e-6)
    assert torch.equal(named[0][1].grad, grads[0])


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 50), spike=st.floats(1.0, 100.0), lambda_rel=st.floats(1.0, 1.2),
       beta=st.floats(0.5, 0.999))
def test_after_warmup_no_tensor_exceeds_lambda_rel_gamma(seed, spike, lambda_rel, beta):
    named = named_params(seed)
    clipper = build_clipper("adagc", warmup_steps=2, lambda_rel=lambda_rel, beta=beta)
    for step in range(8):
        grads = step_grads(named, step, seed, spike_every=0)
        grads[step % len(grads)] *= spike
        gamma = clipper.state_dict()["state"].get("gamma")
        set_grads(named, grads)
        clipper(named)
        if step >= 2:
            post = torch.stack([p.grad.norm() for _, p in named])
            assert bool((post <= lambda_rel * gamma * (1 + 1e-5)).all())


def test_pytorch_optimizer_adagc_warms_up_one_step_less():
    from pytorch_optimizer import AdaGC

    warmup = 5
    params = [p for _, p in named_params()]
    reference = AdaGC([p for _, p in named_params()], lr=1e-3, weight_decay=0.0, warmup_steps=warmup,
                      lambda_rel=1.05, beta=0.98, eps=1e-8)
    shifted = build_clipper("adagc", warmup_steps=warmup - 1, lambda_rel=1.05, beta=0.98, eps=1e-8)
    same_count = build_clipper("adagc", warmup_steps=warmup, lambda_rel=1.05, beta=0.98, eps=1e-8)
    named = [(str(i), p) for i, p in enumerate(params)]
    ref_params = [p for group in reference.param_groups for p in group["params"]]
    for step in range(12):
        grads = step_grads(named, step)
        for p, g in zip(ref_params, grads, strict=True):
            p.grad = g.clone()
        reference.step()
        ref_gamma = torch.stack([reference.state[p]["gamma"].reshape(()) for p in ref_params])
        for clipper in (shifted, same_count):
            set_grads(named, grads)
            clipper(named)
        torch.testing.assert_close(shifted.state_dict()["state"]["gamma"], ref_gamma, rtol=1e-5, atol=0)
        if step + 1 == warmup:  # pytorch-optimizer has left warm-up here, the official count has not
            assert not torch.allclose(same_count.state_dict()["state"]["gamma"], ref_gamma, rtol=1e-5)


def test_shard_mode_uses_local_shard_norms(tmp_path):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        plain = named_params()
        sharded = [(name, torch.nn.Parameter(distribute_tensor(p.detach(), mesh, [Shard(0)]))) for name, p in plain]
        results = {}
        for shard in (False, True):
            clipper = build_clipper("adagc", warmup_steps=2, shard=shard)
            for step in range(5):
                grads = step_grads(plain, step)
                for (_, p), g in zip(sharded, grads, strict=True):
                    p.grad = distribute_tensor(g, mesh, [Shard(0)])
                clipper(sharded)
            results[shard] = [p.grad.to_local().clone() for _, p in sharded]
        reference = build_clipper("adagc", warmup_steps=2)
        for step in range(5):
            set_grads(plain, step_grads(plain, step))
            reference(plain)
        for shard in (False, True):  # one rank: a shard is the whole tensor
            for got, want in zip(results[shard], grads_of(plain), strict=True):
                torch.testing.assert_close(got, want)
    finally:
        dist.destroy_process_group()
