"""`adagc-repro bench step`: both loops run on the same shapes and report through the same formulas."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from adagc_repro.cli import app


@pytest.mark.slow
def test_bench_step_runs_the_three_loops_and_reports_their_ratios(tmp_path, monkeypatch):
    from adagc_repro.checkpoint import Checkpointer
    from adagc_repro.models import attention

    implicit = []  # each attention call's implicit_causal, in the order the loops make them
    original = attention.sdpa_attention
    monkeypatch.setattr(attention, "sdpa_attention",
                        lambda *args, implicit_causal=False, **kwargs: implicit.append(implicit_causal)
                        or original(*args, implicit_causal=implicit_causal, **kwargs))
    saved = []
    monkeypatch.setenv("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "0")  # a tuning variable, recorded with the result
    monkeypatch.setattr(Checkpointer, "save", lambda self, step, *args, **kwargs: saved.append(step))
    out = tmp_path / "step.json"
    overrides = ["model=llama_tiny", "clip=adagc", "train.steps=6", "train.batch_size=2", "train.seq_len=32"]
    result = CliRunner().invoke(app, ["bench", "step", *overrides, "--out", str(out), "--profile", str(tmp_path / "prof")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "| project |" in result.output and "| plain |" in result.output and "| plain_causal |" in result.output
    bench = json.loads(out.read_text())
    assert (bench["model"], bench["clip"], bench["batch_size"], bench["seq_len"]) == ("llama_tiny", "adagc", 2, 32)
    for loop in ("project", "plain", "plain_causal"):
        row = bench[loop]
        assert row["tokens_per_s"] == pytest.approx(2 * 32 / row["step_s"])
        assert row["clip_share"] == pytest.approx(row["clip_ms"] / 1e3 / row["step_s"])
        assert row["mfu"] is None and row["peak_memory_gb"] is None  # CPU: no peak FLOP/s, no CUDA allocator
    assert bench["speedup"] == pytest.approx(bench["project"]["tokens_per_s"] / bench["plain"]["tokens_per_s"])
    assert bench["speedup_same_kernels"] == pytest.approx(bench["project"]["tokens_per_s"]
                                                          / bench["plain_causal"]["tokens_per_s"])
    runs = [flag for i, flag in enumerate(implicit) if i == 0 or flag != implicit[i - 1]]
    assert runs == [True, False, True]  # the project's loss, the plain loop, the plain loop without the mask
    assert bench["versions"]["torch"] and bench["overrides"] == overrides
    assert bench["tuning_env"]["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] == "0"
    for loop in ("project", "plain", "plain_causal"):  # the same three steady steps of each loop, profiled
        assert (tmp_path / "prof" / loop / "operators.txt").read_text().startswith("steps 3-5\nhost time")
        phases = bench[loop]["phases_ms"]
        assert list(phases) == ["clip", "optimizer", "other", "total"] and all(ms > 0 for ms in phases.values())
        assert phases["total"] == pytest.approx(phases["clip"] + phases["optimizer"] + phases["other"], abs=2e-3)
    assert "| clip |" in result.output  # the phase table
    assert saved == []  # no resumable checkpoint: a 1B one takes longer to write than the steps it times


def test_bench_step_rejects_a_bad_override_in_one_line():
    result = CliRunner().invoke(app, ["bench", "step", "model=nope"])
    assert result.exit_code == 2
    assert "model=nope: unknown option" in result.output


def test_bench_clip_is_a_sub_command(tmp_path):
    out = tmp_path / "clip.json"
    result = CliRunner().invoke(app, ["bench", "clip", "--device", "cpu", "--sizes", "tiny", "--repeats", "2",
                                      "--clippers", "global,adagc", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [(row["clipper"], row["impl"]) for row in rows] == [("clip_grad_norm_", "eager"), ("global", "eager"),
                                                               ("adagc", "eager")]
