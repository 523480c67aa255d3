"""A run's summary reports steady-state throughput: a slow first step (as compilation makes it) shows in
`compile_s` and `train_s`, not in `tokens_per_s` / `mfu`; metrics.jsonl still has every step."""

from __future__ import annotations

import json
import statistics
import time

from typer.testing import CliRunner

from adagc_repro.cli import app

FIRST_STEP_DELAY = 4.0


def _slow_first_forward(monkeypatch):
    from adagc_repro import models

    real, calls = models.forward_loss, {"n": 0}

    def forward_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 1:
            time.sleep(FIRST_STEP_DELAY)
        return real(model, batch)

    monkeypatch.setattr(models, "forward_loss", forward_loss)


def test_summary_throughput_comes_from_steady_state_steps(tiny, tmp_path, monkeypatch):
    _slow_first_forward(monkeypatch)
    steps = 8
    result = CliRunner().invoke(app, ["run", *tiny(f"train.steps={steps}", "train.log_every=3")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "results" / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert [row["step"] for row in rows] == list(range(1, steps + 1))

    seconds = [row["step_s"] for row in rows]
    assert seconds[0] > FIRST_STEP_DELAY > 4 * statistics.median(seconds[4:])
    tokens_per_step = 2 * 64
    assert summary["timing_warmup_steps"] == 4
    assert summary["step_s"] == statistics.median(seconds[4:])
    assert summary["tokens_per_s"] == tokens_per_step / summary["step_s"]
    assert summary["tokens_per_s"] > 2 * summary["tokens"] / summary["train_s"]  # the mean over all steps is far lower
    # what the warm-up steps took beyond as many median steps: the slow first step's delay, give or take
    # the other warm-up steps' noise on a shared CPU
    assert summary["compile_s"] == sum(seconds[:4]) - 4 * summary["step_s"]
    assert summary["compile_s"] > FIRST_STEP_DELAY / 2
    assert summary["train_s"] == sum(seconds)
    # wall clock of the steady steps agrees with the median step (loosely: a shared 2-core CPU is noisy)
    assert 0.3 < summary["tokens_per_s_wall"] / summary["tokens_per_s"] < 1.5
    assert summary["mfu"] is None  # no peak on CPU
