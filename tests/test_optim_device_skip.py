"""The device-side skip of the optimizer step: a skipped step leaves parameters, optimizer state and
clipper state exactly as they were; a taken step is the plain `optimizer.step()`."""

from __future__ import annotations

import copy

import pytest
import torch

from adagc_repro.clipping import build_clipper
from adagc_repro.optim.stepping import skips_on_device, step_unless


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


def _backward(model: torch.nn.Module, poison: bool = False) -> torch.Tensor:
    loss = model(torch.randn(4, 6)).square().mean()
    loss.backward()
    if poison:
        next(model.parameters()).grad[0, 0] = float("inf")
    return loss.detach()


def _snapshot(model, optimizer, clipper) -> dict:
    return copy.deepcopy({"model": model.state_dict(), "optim": optimizer.state_dict(), "clip": clipper.state_dict()})


def _assert_identical(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_identical(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_identical(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), (a, b)
    else:
        assert a == b


def _optimizer(kind: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if kind == "fused_adamw":
        return torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1, fused=True)
    from adagc_repro.optim.lion import Lion

    return Lion(model.parameters(), lr=0.1)


@pytest.mark.parametrize("kind", ["fused_adamw", "lion"])
@pytest.mark.parametrize("clip", ["adagc", "zclip", "global"])
def test_a_skipped_step_changes_no_state(kind, clip):
    model = _model()
    optimizer = _optimizer(kind, model)
    assert skips_on_device(optimizer) == (kind == "fused_adamw")
    clipper = build_clipper(clip, **({"warmup_steps": 1} if clip in ("adagc", "zclip") else {}))
    for _ in range(3):  # real steps first, so that every state holds non-trivial values
        stats = clipper(model, loss=_backward(model))
        step_unless(optimizer, stats.skipped)
        optimizer.zero_grad(set_to_none=True)
    before = _snapshot(model, optimizer, clipper)

    stats = clipper(model, loss=_backward(model, poison=True))
    assert bool(stats.skipped)
    step_unless(optimizer, stats.skipped)
    _assert_identical(_snapshot(model, optimizer, clipper), before)
    assert not hasattr(optimizer, "found_inf")  # the flag never leaks into later steps
    optimizer.zero_grad(set_to_none=True)

    stats = clipper(model, loss=_backward(model))
    step_unless(optimizer, stats.skipped)
    after = _snapshot(model, optimizer, clipper)
    assert not torch.equal(after["model"]["0.weight"], before["model"]["0.weight"])


def test_taken_steps_match_plain_optimizer_steps():
    model, reference = _model(), _model()
    optimizer = _optimizer("fused_adamw", model)
    plain = _optimizer("fused_adamw", reference)
    _assert_same_steps((model, optimizer), (reference, plain), steps=3, seed=1)


def test_a_skipped_first_step_leaves_the_trajectory_of_a_fresh_optimizer():
    # The fused optimizer creates its state on the skipped call (step 0, zero moments): the steps after it
    # are those of an optimizer that never saw the skipped step.
    model, reference = _model(), _model()
    optimizer, plain = _optimizer("fused_adamw", model), _optimizer("fused_adamw", reference)
    _backward(model, poison=True)
    step_unless(optimizer, torch.tensor(True))
    optimizer.zero_grad(set_to_none=True)
    assert all(int(state["step"]) == 0 for state in optimizer.state.values())
    _assert_same_steps((model, optimizer), (reference, plain), steps=2, seed=2)


def _assert_same_steps(skipping, plain, *, steps: int, seed: int) -> None:
    """`steps` taken steps through step_unless equal plain optimizer.step() calls on the same gradients."""
    (model, optimizer), (reference, reference_optimizer) = skipping, plain
    for _ in range(steps):
        for net in (model, reference):
            torch.manual_seed(seed)
            _backward(net)
        step_unless(optimizer, torch.tensor(False))
        reference_optimizer.step()
        for opt in (optimizer, reference_optimizer):
            opt.zero_grad(set_to_none=True)
    _assert_identical(model.state_dict(), reference.state_dict())
    _assert_identical(optimizer.state_dict(), reference_optimizer.state_dict())
