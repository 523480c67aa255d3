"""The training loop checked against independent computations, through its public behaviour only:
`train(cfg, run_dir)`, metrics.jsonl and summary.json, with spies plugged in through the registries
(a clipper and an optimizer whose step hooks record what they see) and the public `forward_loss` helper.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

import adagc_repro.models as models
from adagc_repro.clipping.base import CLIPPERS, Clipper, Decision
from adagc_repro.config import compose
from adagc_repro.metrics.spike import SpikePreset
from adagc_repro.optim import OPTIMIZERS
from adagc_repro.train import train

SMALL_MODEL = ("model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=1",
               "model.num_attention_heads=2")
EVENTS: list[tuple] = []  # what the spies saw, in order
SPY_COEF = 0.5


class SpyClipper(Clipper):
    """Records the gradients and parameters it is handed, then scales every gradient by SPY_COEF."""

    name = "loop_spy"

    def _decide(self, batch, finite, loss):
        EVENTS.append(("clip", {name: (id(p), p.detach().clone(), g.clone())
                                for name, p, g in zip(batch.names, batch.params, batch.grads, strict=True)}))
        return Decision(coefs=torch.tensor(SPY_COEF, device=batch.device))


def spy_adamw(model, device_type: str = "cpu", **hparams):
    """The registered AdamW, with step hooks recording the gradients, lrs and state around each update."""
    optimizer = OPTIMIZERS.build("adamw", model, device_type, **hparams)

    def before(opt, args, kwargs):
        EVENTS.append(("step", {id(p): p.grad.clone() for group in opt.param_groups for p in group["params"]},
                       [group["lr"] for group in opt.param_groups], _state(opt)))

    def after(opt, args, kwargs):
        EVENTS.append(("stepped", _state(opt)))

    optimizer.register_step_pre_hook(before)
    optimizer.register_step_post_hook(after)
    return optimizer


def _state(optimizer) -> dict:
    """Every parameter with its optimizer state, copied."""
    return {id(p): {"param": p.detach().clone(), **{k: v.clone() if torch.is_tensor(v) else v
                                                   for k, v in optimizer.state[p].items()}}
            for group in optimizer.param_groups for p in group["params"]}


@pytest.fixture(autouse=True)
def _spies(monkeypatch):
    """The spies are registered for these tests only: each registry gets a copy of its table first."""
    for registry, name, builder in ((CLIPPERS, "loop_spy", SpyClipper), (OPTIMIZERS, "spy_adamw", spy_adamw)):
        monkeypatch.setattr(registry, "_builders", dict(registry._builders))
        registry.register(name)(builder)
    EVENTS.clear()
    yield
    EVENTS.clear()


def run(tmp_path: Path, *overrides: str, name: str = "run") -> tuple[list[dict], dict]:
    """Train in-process; returns (step rows of metrics.jsonl, summary)."""
    folder = tmp_path / name
    cfg = compose(tiny_overrides(folder, *SMALL_MODEL, *overrides))
    run_dir = folder / "run"
    run_dir.mkdir(parents=True)
    summary = train(cfg, run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "loss" in row], summary


def of_kind(kind: str) -> list[tuple]:
    return [event for event in EVENTS if event[0] == kind]


def test_accumulating_k_micro_batches_of_b_equals_one_batch_of_k_times_b(tmp_path):
    spies = ("clip=none", "clip.name=loop_spy", "optim.name=spy_adamw", "train.steps=3")
    seen = {}
    for batch_size, accum in ((4, 1), (2, 2), (1, 4)):
        rows, summary = run(tmp_path, *spies, f"train.batch_size={batch_size}", f"train.grad_accum={accum}",
                            f"train.val_batches={accum}", name=f"b{batch_size}k{accum}")  # 4 validation blocks
        seen[accum] = ([row["loss"] for row in rows], [event[1] for event in of_kind("clip")], summary["val_loss"])
        EVENTS.clear()
    losses, clips, val_loss = seen[1]
    for accum in (2, 4):
        other_losses, other_clips, other_val = seen[accum]
        assert other_losses == pytest.approx(losses, rel=1e-5)
        assert other_val == pytest.approx(val_loss, rel=1e-5)
        for step, (want, got) in enumerate(zip(clips, other_clips, strict=True)):
            assert want.keys() == got.keys()
            for name in want:  # the gradient handed to the clipper, and the parameters the previous steps left
                torch.testing.assert_close(got[name][2], want[name][2], rtol=1e-4, atol=1e-7, msg=f"grad {step} {name}")
                torch.testing.assert_close(got[name][1], want[name][1], rtol=1e-4, atol=1e-7, msg=f"param {step} {name}")


def test_clipping_follows_accumulation_and_the_optimizer_steps_on_the_clipped_gradient(tmp_path):
    run(tmp_path, "clip=none", "clip.name=loop_spy", "optim.name=spy_adamw", "train.steps=3", "train.grad_accum=2")
    kinds = [event[0] for event in EVENTS]
    assert kinds == ["clip", "step", "stepped"] * 3
    for clip, step in zip(of_kind("clip"), of_kind("step"), strict=True):
        handed = {pid: grad for pid, _, grad in clip[1].values()}
        assert handed.keys() == step[1].keys()
        for pid, grad in handed.items():
            torch.testing.assert_close(step[1][pid], SPY_COEF * grad)  # exactly the clipper's output


def expected_cosine_lr(peak: float, step: int, total: int, warmup: int, floor: float) -> float:
    """The cosine schedule written out: linear warm-up (step/warmup), then cosine from peak to floor·peak."""
    if step <= warmup:
        return peak * step / warmup
    progress = (step - 1 - warmup) / (total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def test_logged_lr_is_the_schedule_value_and_the_one_the_optimizer_used(tmp_path):
    steps, warmup, peak, floor = 7, 3, 0.01, 0.1
    rows, _ = run(tmp_path, "optim.name=spy_adamw", f"optim.lr={peak}", "schedule=cosine",
                  f"schedule.warmup_steps={warmup}", f"schedule.min_lr_ratio={floor}", f"train.steps={steps}")
    used = [event[2] for event in of_kind("step")]
    assert len(used) == steps
    for row, lrs in zip(rows, used, strict=True):
        want = expected_cosine_lr(peak, row["step"], steps, warmup, floor)
        assert row["lr"] == pytest.approx(want, rel=1e-12)
        assert lrs == pytest.approx([want] * len(lrs), rel=1e-12)
    assert rows[0]["lr"] == pytest.approx(peak / warmup) and rows[-1]["lr"] < rows[warmup]["lr"]


def _spike_on_calls(monkeypatch, calls: set[int], factor: float) -> None:
    """Multiply the training loss of the given forward_loss calls (1-based) by `factor`."""
    real = models.forward_loss
    count = {"n": 0}

    def forward_loss(model, batch):
        count["n"] += 1
        loss, extras = real(model, batch)
        return (loss * factor if count["n"] in calls else loss), extras

    monkeypatch.setattr(models, "forward_loss", forward_loss)


def test_a_skip_step_spike_leaves_parameters_and_optimizer_state_untouched(tmp_path, monkeypatch):
    spike = 24  # skip_step tests from its 20th value on
    _spike_on_calls(monkeypatch, {spike}, factor=50.0)
    rows, summary = run(tmp_path, "clip=skip_step", "clip.rolling_interval_length=19", "optim.name=spy_adamw",
                        f"train.steps={spike + 2}", "train.checkpoint_every=0")
    assert [row["step"] for row in rows if row["skipped"]] == [spike]
    assert rows[spike - 1]["skipped"] == "spike" and summary["spike_skips"] == 1
    steps = of_kind("step")
    assert len(steps) == spike + 1  # no update at the spike
    before, after = of_kind("stepped")[spike - 2][1], steps[spike - 1][3]  # state after step 23, before step 25
    for pid, state in before.items():
        assert state.keys() == after[pid].keys() == {"param", "step", "exp_avg", "exp_avg_sq"}
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(after[pid][key]), torch.as_tensor(value)), key


def test_spike_monitor_and_summary_count_nonfinite_steps_alike(tmp_path, monkeypatch):
    _spike_on_calls(monkeypatch, {5, 6, 11}, factor=math.nan)
    window, sigma = 3, 0.5  # small enough that a 14-step run has spikes
    rows, summary = run(tmp_path, "train.steps=14", f"spike.monitor.window={window}", f"spike.monitor.n_sigma={sigma}",
                        f"spike.presets.olmo_core.window={window}", f"spike.presets.olmo_core.n_sigma={sigma}")
    assert summary["nonfinite_skips"] == 3
    preset = SpikePreset(window=window, n_sigma=sigma, two_sided=False, strict=True)
    loss_flags, _ = preset.test([row["loss"] for row in rows])
    norm_flags, _ = preset.test([row.get("grad_norm") for row in rows])
    assert [row["spike/is_spike"] for row in rows] == [int(flag) for flag in loss_flags | norm_flags]
    assert 0 < rows[-1]["spike/score_total"] == pytest.approx(summary["spike_score"]["olmo_core"]["any"])
    assert rows[-1]["spike/score_total"] == pytest.approx(100 * sum(loss_flags | norm_flags) / len(rows))


def test_cli_run_values_agree_with_independent_computations(tiny, tmp_path):
    from typer.testing import CliRunner

    from adagc_repro.cli import app

    steps, batch, accum, seq = 5, 2, 2, 64
    result = CliRunner().invoke(app, ["run", *tiny(f"train.steps={steps}", f"train.grad_accum={accum}",
                                                   "train.val_every=2", *SMALL_MODEL)])
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "results" / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    step_rows = [row for row in rows if "loss" in row]
    assert [row["step"] for row in step_rows] == list(range(1, steps + 1))
    assert [row["tokens"] for row in step_rows] == [s * batch * accum * seq for s in range(1, steps + 1)]
    assert summary["steps"] == steps and summary["tokens"] == steps * batch * accum * seq
    for row in rows:
        if "val/loss" in row:
            assert row["val/ppl"] == pytest.approx(math.exp(row["val/loss"]), rel=1e-9)
    assert [row["step"] for row in rows if "val/loss" in row] == [2, 4, steps]
    final = rows[-1]
    assert final["final"] and summary["val_loss"] == final["val/loss"]
    assert summary["val_ppl"] == pytest.approx(math.exp(summary["val_loss"]), rel=1e-9)
    assert summary["final_train_loss"] == pytest.approx(sum(r["loss"] for r in step_rows) / steps)
    for row in step_rows:
        assert row["grad_norm_post"] <= row["grad_norm"] * (1 + 1e-6)
        assert row["tokens_per_s"] > 0
