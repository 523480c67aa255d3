"""Every range and cross-key constraint fails at compose time (exit 2, one line, nothing written);
legal-but-suspicious settings warn."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from adagc_repro.cli import app
from adagc_repro.config import compose, suspicious_settings
from adagc_repro.errors import ConfigError

runner = CliRunner()

OUT_OF_RANGE = [
    (["clip.beta=2"], "clip.beta", "[0.0, 1.0)"),
    (["clip.lambda_rel=-1"], "clip.lambda_rel", "(0.0, inf]"),
    (["optim.lr=-1"], "optim.lr", "(0.0, inf]"),
    (["optim.betas=[0.9,1.5]"], "optim.betas[1]", "[0.0, 1.0)"),
    (["optim=muon", "optim.momentum=1.0"], "optim.momentum", "[0.0, 1.0)"),
    (["clip=zclip", "clip.alpha=1.5"], "clip.alpha", "[0.0, 1.0)"),
    (["train.seq_len=100000"], "train.seq_len", "<= 1024"),
    (["model=gpt2_345m", "train.seq_len=4096"], "train.seq_len", "<= 2048"),
    (["schedule.min_lr_ratio=2"], "schedule.min_lr_ratio", "[0, 1]"),
    (["train.val_batches=0"], "train.val_batches", ">= 1"),
    (["train.checkpoint_every=-1"], "train.checkpoint_every", ">= 0"),
    (["model=clip_tiny", "data=stdlib_docs"], "data", "data=shapes"),
    (["data=shapes"], "data", "data=stdlib_docs"),
]


@pytest.mark.parametrize(("overrides", "key", "allowed"), OUT_OF_RANGE)
def test_out_of_range_values_fail_at_compose_time(overrides, key, allowed):
    with pytest.raises(ConfigError) as info:
        compose(overrides)
    assert info.value.key == key
    assert allowed in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("verb", ["run", "show"])
def test_run_and_show_refuse_out_of_range_values_before_writing(verb, tmp_path):
    result = runner.invoke(app, [verb, f"paths.results={tmp_path / 'results'}", "clip.beta=2"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: clip.beta: must be a number in [0.0, 1.0), got 2"
    assert not (tmp_path / "results").exists()


def test_a_sweep_is_validated_as_a_whole_before_any_run(tmp_path):
    result = runner.invoke(app, ["run", "-m", f"paths.results={tmp_path / 'results'}", "optim.lr=1e-3,-1"])
    assert result.exit_code == 2 and "optim.lr" in result.output
    assert not (tmp_path / "results").exists()


def test_adagc_warmup_longer_than_the_run_warns():
    notes = suspicious_settings(compose(["train.steps=50", "schedule.warmup_steps=5"]))
    assert notes == ["train.steps=50 <= clip.warmup_steps=100: clip=adagc never leaves its warm-up "
                     "(AdaGC then equals GlobalGC at clip.lambda_abs)"]
    assert suspicious_settings(compose(["train.steps=101", "schedule.warmup_steps=5"])) == []
    assert suspicious_settings(compose(["clip=global", "train.steps=5", "schedule.warmup_steps=5"])) == [
        "train.steps=5 <= schedule.warmup_steps=5: the learning rate never reaches optim.lr"]


def test_show_prints_the_warning_and_still_succeeds():
    result = runner.invoke(app, ["show", "train.steps=50"])
    assert result.exit_code == 0
    assert "warning: train.steps=50 <= clip.warmup_steps=100" in result.output
