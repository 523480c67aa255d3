"""Clipping folded into AdamW's update (`optim/folded_adamw.py`, `train.fold_clip`) gives the step that
clipping the gradients and then stepping torch.optim.AdamW gives: for every strategy that can leave its
scaling to the optimizer, through warm-up, spikes, a parameter without a gradient, a non-finite step and
a learning rate that changes every step; compiled without recompiling when the learning rate moves; and
in the training loop itself."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_overrides
from test_clipping_helpers import CONFIGS, build, named_params, set_grads, step_grads

from adagc_repro.errors import ConfigError
from adagc_repro.optim.folded_adamw import FoldedAdamW, build_folding
from adagc_repro.optim.param_groups import DEFAULT_NO_DECAY, decay_groups
from adagc_repro.optim.stepping import step_unless

STEPS, NONFINITE_STEP, GRADLESS_STEP = 12, 5, 7
DEFERRING = sorted(name for name in CONFIGS if not build(name).scales_itself)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def adamw(named):
    """Two groups (decayed matrices; embeddings and 1-D tensors without decay), as the project builds them;
    torch's fused kernel on CUDA."""
    fused = named[0][1].is_cuda or None
    return torch.optim.AdamW(decay_groups(named, 0.1, DEFAULT_NO_DECAY, False), lr=1e-2, betas=(0.9, 0.95), fused=fused)


def _on(device: str):
    return [(name, torch.nn.Parameter(p.detach().to(device))) for name, p in named_params()]


def _grads(named, step: int) -> list[torch.Tensor | None]:
    grads = step_grads(named, step)
    if step == NONFINITE_STEP:
        grads[1][0, 0] = math.nan
    if step == GRADLESS_STEP:
        grads[3] = None  # a parameter that took no part in this step
    return grads


def _trajectories(name: str, backend: str = "none", device: str = "cpu"):
    """(clip-then-step, folded) after STEPS steps: parameters, optimizer states, skips, smallest coefficients."""
    reference, folded = _on(device), _on(device)
    ref_opt, fold_opt = adamw(reference), adamw(folded)
    ref_clip, fold_clip = build(name), build(name)
    fold = FoldedAdamW(fold_opt, folded, backend=backend)
    skips, min_coefs = [], []
    for step in range(STEPS):
        grads = [g if g is None else g.to(device) for g in _grads(reference, step)]
        loss = torch.tensor(2.0 + 0.01 * step, device=device)
        for optimizer in (ref_opt, fold_opt):
            for group in optimizer.param_groups:
                group["lr"] = 1e-2 * (1 - step / STEPS)  # a schedule
        set_grads(reference, grads)
        stats = ref_clip(reference, loss=loss)
        step_unless(ref_opt, stats.skipped)
        set_grads(folded, grads)
        stats = fold_clip(folded, loss=loss, scale=False)
        fold.step(stats.names, stats.coefs, stats.skipped)
        assert all(g is None or torch.equal(p.grad, g) for (_, p), g in zip(folded, grads, strict=True)
                   if g is not None and torch.isfinite(g).all())  # scale=False left the gradients alone
        skips.append(bool(stats.skipped))
        min_coefs.append(float(stats.coefs.min()))
    return (reference, ref_opt), (folded, fold_opt), skips, min_coefs


def _assert_same_optimizer(got, want, rtol: float, atol: float) -> None:
    (got_named, got_opt), (want_named, want_opt) = got, want
    for (name, p), (_, q) in zip(got_named, want_named, strict=True):
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol, msg=name)
        for key, value in want_opt.state[q].items():
            torch.testing.assert_close(got_opt.state[p][key], value, rtol=rtol, atol=atol, msg=f"{name} {key}")


@pytest.mark.parametrize("name", DEFERRING)
def test_folded_step_equals_clipping_then_adamw(name):
    want, got, skips, min_coefs = _trajectories(name)
    assert skips[NONFINITE_STEP]
    assert sum(skips) < STEPS  # steps were taken
    if name != "none":
        assert min(min_coefs) < 0.999, "the trajectory never clipped: it would not test the coefficients"
    _assert_same_optimizer(got, want, rtol=1e-6, atol=1e-6)
    # the parameter without a gradient at GRADLESS_STEP took one step fewer, in both paths
    counts = {int(got[1].state[p]["step"]) for _, p in got[0]}
    assert counts == {STEPS - 1, STEPS - 2}


def test_a_skipped_step_leaves_every_state_bit_for_bit():
    named = named_params()
    optimizer, clipper = adamw(named), build("adagc")
    fold = FoldedAdamW(optimizer, named, backend="none")
    for step in range(3):
        set_grads(named, step_grads(named, step))
        stats = clipper(named, scale=False)
        fold.step(stats.names, stats.coefs, stats.skipped)
    before = [(p.clone(), {k: v.clone() for k, v in optimizer.state[p].items()}) for _, p in named]
    grads = step_grads(named, 3)
    grads[0][0, 0] = math.inf
    set_grads(named, grads)
    stats = clipper(named, scale=False)
    fold.step(stats.names, stats.coefs, stats.skipped)
    for (_, p), (old, state) in zip(named, before, strict=True):
        assert torch.equal(p, old)
        assert all(torch.equal(optimizer.state[p][k], v) for k, v in state.items())


def test_compiled_folded_step_matches_and_a_moving_lr_does_not_recompile():
    eager = _trajectories("adagc")[1]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = _trajectories("adagc", backend="aot_eager")[1]
    _assert_same_optimizer(compiled, eager, rtol=1e-6, atol=1e-6)
    # one graph per group and per set of parameters with gradients (all; all but one), whatever the lr
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 4


def test_the_checkpoint_of_a_folded_run_resumes_unfolded():
    named = named_params()
    optimizer, clipper = adamw(named), build("adagc")
    fold = FoldedAdamW(optimizer, named, backend="none")
    set_grads(named, step_grads(named, 0))
    stats = clipper(named, scale=False)
    fold.step(stats.names, stats.coefs, stats.skipped)
    other = adamw(named_params())
    other.load_state_dict(optimizer.state_dict())  # torch.optim.AdamW's own state: same keys, shapes, dtypes
    assert other.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()


def test_a_unit_wise_clipper_refuses_to_leave_its_scaling():
    named = named_params()
    set_grads(named, step_grads(named, 0))
    clipper = build("agc")
    assert not clipper.can_defer(named)
    with pytest.raises(ValueError, match="scale=True"):
        clipper(named, scale=False)


def test_fold_clip_setting():
    named = named_params()
    optimizer = adamw(named)
    assert build_folding("auto", optimizer, build("adagc"), named, compiled=False) is None  # eager: no gain
    assert build_folding("false", optimizer, build("adagc"), named, compiled=True) is None
    assert isinstance(build_folding("auto", optimizer, build("adagc"), named, compiled=True), FoldedAdamW)
    assert isinstance(build_folding(True, optimizer, build("adagc"), named, compiled=False), FoldedAdamW)
    assert build_folding("auto", optimizer, build("agc"), named, compiled=True) is None
    with pytest.raises(ConfigError, match=r"train.fold_clip: clip=agc .*allowed: auto, false"):
        build_folding("true", optimizer, build("agc"), named, compiled=False)
    sgd = torch.optim.SGD([p for _, p in named], lr=0.1)
    assert build_folding("auto", sgd, build("adagc"), named, compiled=True) is None
    with pytest.raises(ConfigError, match="train.fold_clip: needs optim=adamw"):
        build_folding("true", sgd, build("adagc"), named, compiled=False)
    with pytest.raises(ConfigError, match="train.fold_clip: unknown value 'yes'"):
        build_folding("yes", optimizer, build("adagc"), named, compiled=False)


def test_the_loop_with_folded_clipping_trains_as_the_unfolded_one(tmp_path):
    from adagc_repro.config import compose
    from adagc_repro.train import train

    small = ("model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=1",
             "model.num_attention_heads=2", "train.steps=6", "clip.warmup_steps=2", "clip.lambda_rel=0.5")
    runs = {}
    for fold in ("false", "true"):
        run_dir = tmp_path / fold / "run"
        run_dir.mkdir(parents=True)
        summary = train(compose(tiny_overrides(tmp_path / fold, *small, f"train.fold_clip={fold}")), run_dir)
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        runs[fold] = ([row for row in rows if "loss" in row], summary)
    (unfolded, plain_summary), (folded, fold_summary) = runs["false"], runs["true"]
    assert (plain_summary["fold_clip"], fold_summary["fold_clip"]) == (False, True)
    assert min(row["clip/min_coef"] for row in folded) < 1  # lambda_rel 0.5: AdaGC clips after warm-up
    for key in ("loss", "grad_norm", "grad_norm_post", "clip/min_coef"):
        assert [row[key] for row in folded] == pytest.approx([row[key] for row in unfolded], rel=1e-5), key
    assert fold_summary["val_loss"] == pytest.approx(plain_summary["val_loss"], rel=1e-5)
