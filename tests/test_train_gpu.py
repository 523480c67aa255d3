"""The training loop on CUDA: bf16 autocast, fused AdamW, torch.compile, MFU reporting."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from adagc_repro.cli import app

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("compile_model", ["false", "true"])
def test_cli_run_on_cuda_in_bf16(tiny, tmp_path, compile_model):
    overrides = tiny("train.device=cuda", "train.precision=bf16", f"train.compile={compile_model}",
                     "train.steps=30", "train.batch_size=8", "train.seq_len=128", "clip=adagc", "clip.warmup_steps=10")
    result = CliRunner().invoke(app, ["run", *overrides], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "results" / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["device"].startswith("cuda")
    assert summary["mfu"] is not None and summary["mfu"] > 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    losses = [row["loss"] for row in rows]
    assert all(loss is not None for loss in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    assert summary["nonfinite_skips"] == 0
