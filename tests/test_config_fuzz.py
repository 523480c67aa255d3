"""Random override combinations either train a step or fail with one line naming the key."""

from __future__ import annotations

import json

from conftest import tiny_overrides
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from adagc_repro.cli import app

CHOICES = {
    "model": ["llama_tiny", "mixtral_tiny", "clip_tiny", "no_such_model"],
    "clip": ["none", "global", "adagc", "zclip", "aggc", "agc", "skip_step", "bogus"],
    "optim": ["adamw", "lion", "muon", "stableadamw", "sgd"],
    "data": ["stdlib_docs", "shapes", "text_files"],
    "train.grad_accum": ["1", "2", "0", "two"],
    "clip.lambda_rel": ["1.04", "-1", "abc"],
    "optim.lr": ["1e-3", "fast"],
    "train.stepz": ["3"],
}


@st.composite
def override_sets(draw):
    keys = draw(st.lists(st.sampled_from(sorted(CHOICES)), min_size=1, max_size=4, unique=True))
    return [f"{key}={draw(st.sampled_from(CHOICES[key]))}" for key in keys]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides=override_sets())
def test_random_overrides_run_a_step_or_fail_with_one_clear_line(tmp_path_factory, overrides):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    args = ["run", *tiny_overrides(tmp_path, "train.steps=1", "train.batch_size=2", "train.seq_len=32"), *overrides]
    result = CliRunner().invoke(app, args)
    if result.exit_code == 2:  # rejected before anything ran
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
        assert not (tmp_path / "results" / "runs").exists()
        return
    (run_dir,) = (tmp_path / "results" / "runs").iterdir()
    if result.exit_code == 0:
        assert json.loads((run_dir / "summary.json").read_text())["steps"] == 1
        return
    assert result.exit_code == 1, result.output
    last = (run_dir / "error.txt").read_text().strip().splitlines()[-1]
    assert last.startswith("adagc_repro.errors.ConfigError: "), f"{overrides}: {last}"
