"""The compiled clipping path (`Clipper.compile()`) agrees with the eager reference for every registered
strategy: post-clip gradients, every logged metric and the state, through warm-up, spikes and a
non-finite step. On CPU the graphs run through AOTAutograd without Inductor (fast, and it checks what
compilation can break: state mutation, masking, the per-tensor scaling); the GPU test adds Inductor."""

from __future__ import annotations

import math

import pytest
import torch
from test_clipping_helpers import CONFIGS, build, grads_of, named_params, set_grads, step_grads

from adagc_repro.clipping import CLIPPERS

STEPS, NONFINITE_STEP = 10, 5


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def test_every_registered_clipper_is_checked():
    assert sorted(CONFIGS) == sorted(CLIPPERS.names())


def _trajectory(clipper, device: str = "cpu") -> list[dict]:
    named = [(name, torch.nn.Parameter(p.detach().to(device))) for name, p in named_params()]
    out = []
    for step in range(STEPS):
        grads = step_grads(named, step)
        if step == NONFINITE_STEP:
            grads[1][0, 0] = math.nan
        set_grads(named, [g.to(device) for g in grads])
        stats = clipper(named, loss=torch.tensor(2.0 + 0.01 * step, device=device))
        out.append({"metrics": stats.as_metrics(), "skipped": bool(stats.skipped), "grads": grads_of(named)})
    return out


def assert_same(compiled: list[dict], eager: list[dict], clipper, reference, rtol: float, atol: float) -> None:
    for got, want in zip(compiled, eager, strict=True):
        assert got["skipped"] == want["skipped"]
        assert got["metrics"].keys() == want["metrics"].keys()
        for key, value in want["metrics"].items():
            if value is None:
                assert got["metrics"][key] is None, key
            else:
                assert got["metrics"][key] == pytest.approx(value, rel=rtol, abs=atol), key
        for g, w in zip(got["grads"], want["grads"], strict=True):
            torch.testing.assert_close(g.cpu(), w.cpu(), rtol=rtol, atol=atol, equal_nan=True)
    state, expected = clipper.state_dict()["state"], reference.state_dict()["state"]
    assert state.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(state[key].cpu(), expected[key].cpu(), rtol=rtol, atol=atol, equal_nan=True)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_compiled_path_matches_eager_reference(name):
    eager, compiled = build(name), build(name).compile(backend="aot_eager")
    want, got = _trajectory(eager), _trajectory(compiled)
    assert want[NONFINITE_STEP]["skipped"]
    assert_same(got, want, compiled, eager, rtol=1e-6, atol=1e-6)
    compiled_frames = torch._dynamo.utils.counters["frames"]["ok"]
    assert compiled_frames > 0 if compiled.compilable else compiled_frames == 0


def test_a_strategy_marked_uncompilable_keeps_the_eager_path():
    from adagc_repro.clipping.global_clip import GlobalClip

    class HostSideGlobalClip(GlobalClip):  # a plug-in whose Python state changes every step
        compilable = False

    plugin, reference = HostSideGlobalClip(max_norm=1.0).compile(backend="aot_eager"), build("global")
    assert_same(_trajectory(plugin), _trajectory(reference), plugin, reference, rtol=0, atol=0)
    assert torch._dynamo.utils.counters["frames"]["ok"] == 0  # nothing was compiled: the eager path ran


def test_autoclip_compiles_once_per_history_capacity(monkeypatch):
    from adagc_repro.clipping import autoclip

    monkeypatch.setattr(autoclip, "INITIAL_CAPACITY", 4)
    eager, compiled = build("autoclip"), build("autoclip").compile(backend="aot_eager")
    named = named_params()
    for step in range(20):  # capacities 4, 16 and 64
        for clipper in (eager, compiled):
            set_grads(named, step_grads(named, step))
            clipper(named)
    assert compiled.state_dict()["state"]["history"].numel() == 64
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 3
    torch.testing.assert_close(compiled.state_dict()["state"]["history"], eager.state_dict()["state"]["history"])
