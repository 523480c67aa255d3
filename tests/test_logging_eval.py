"""Optional mirrors and evaluation inside a run: W&B offline files, periodic WikiText evaluation."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from adagc_repro.cli import app

runner = CliRunner()


def _run_dir(tmp_path):
    (run_dir,) = (tmp_path / "results" / "runs").iterdir()
    return run_dir


def test_wandb_offline_writes_inside_the_run_folder(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # its one lookup stays on loopback
    for var in ("WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    result = runner.invoke(app, ["run", *tiny("logger=wandb", "logger.mode=offline")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run_dir = _run_dir(tmp_path)
    offline_runs = list((run_dir / "wandb").rglob("offline-run-*"))
    assert offline_runs, "W&B wrote nothing into the run folder"
    assert list(offline_runs[0].glob("*.wandb"))


def test_periodic_wikitext_evaluation_lands_in_metrics_and_eval_json(tiny, tmp_path, shared_data):
    wikitext = shared_data / "wikitext-2" / "test.txt"
    result = runner.invoke(app, ["run", *tiny(
        "eval=wikitext", f"eval.wikitext.path={wikitext}", "eval.wikitext.max_tokens=2000", "eval.every_n_steps=2",
    )], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run_dir = _run_dir(tmp_path)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    periodic = [row for row in rows if "eval/wikitext_ppl" in row]
    assert [row["step"] for row in periodic] == [2]
    final = json.loads((run_dir / "eval.json").read_text())
    assert final["step"] == 4 and final["wikitext"]["ppl"] > 1 and final["wikitext"]["bits_per_byte"] > 0
