"""The CLI verbs end to end on tiny CPU runs (in-process through typer's CliRunner)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from adagc_repro.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_help_is_fast_and_imports_nothing_heavy():
    code = "import sys, adagc_repro.cli as c; sys.argv=['adagc-repro','--help']\ntry: c.main()\nexcept SystemExit: pass\nprint(sorted(m for m in ('torch','transformers','datasets','wandb','hydra') if m in sys.modules))"
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert time.perf_counter() - started < 5  # interpreter start-up included; typically ~0.3 s
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert "run" in out.stdout and "tables" in out.stdout


def test_list_shows_every_group():
    result = invoke("list")
    assert result.exit_code == 0
    for group in ("model:", "clip:", "optim:", "data:", "experiment:"):
        assert group in result.stdout
    assert "adagc" in invoke("list", "clip").stdout


def test_show_prints_config_and_run_id(tiny):
    result = invoke("show", *tiny("clip=global"))
    assert result.exit_code == 0
    assert result.stdout.startswith("# run ")
    assert "name: global" in result.stdout and "(missing)" in result.stdout


def test_bad_override_is_one_line_and_nonzero(tiny):
    result = runner.invoke(app, ["run", *tiny("train.stepz=3")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: train.stepz: unknown key")


def test_run_writes_a_done_run_and_skips_it_next_time(tiny, tmp_path):
    result = invoke("run", *tiny("clip=global", "train.telemetry_every=2"))
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "results" / "runs").iterdir()
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "provenance.json", "DONE"):
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run_id"] == run_dir.name and summary["steps"] == 4 and summary["clip"] == "global"
    assert summary["tokens"] == 4 * 2 * 64
    assert summary["val_ppl"] > 1 and summary["final_train_loss"] > 0
    assert set(summary["spike_score"]) >= {"olmo2", "olmo_core"}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in rows if "loss" in row]
    assert [row["step"] for row in steps] == [1, 2, 3, 4]
    assert {"grad_norm", "grad_norm_post", "lr", "tokens", "tokens_per_s", "clip/frac_clipped"} <= set(steps[0])
    assert [row["step"] for row in steps if "telemetry" in row] == [2, 4]
    telemetry = steps[1]["telemetry"]
    assert telemetry["top"] and {"0", "1", "2", "3"} <= set(telemetry["layers"])
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["versions"]["torch"] and provenance["packages"]

    again = invoke("run", *tiny("clip=global", "train.telemetry_every=2"))
    assert "skipped" in again.stdout
    assert json.loads((run_dir / "summary.json").read_text()) == summary


def test_multirun_sweep_status_and_rerun(tiny, tmp_path, monkeypatch):
    from adagc_repro import launch

    # The jobs train in this process, not each in a worker process of its own (9 s of imports per job):
    # what is checked here is the sweep's bookkeeping. tests/test_sweep_isolation.py runs jobs in workers.
    monkeypatch.setattr(launch, "_train_in_child", launch._train_in_process)
    args = ["run", "-m", "clip=none,global", "seed=0,1", *tiny()]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    runs = sorted((tmp_path / "results" / "runs").iterdir())
    assert len(runs) == 4 and all((r / "DONE").exists() for r in runs)
    (manifest,) = (tmp_path / "results" / "sweeps").glob("*/manifest.json")
    listed = json.loads(manifest.read_text())["runs"]
    assert sorted(r["run_id"] for r in listed) == [r.name for r in runs]

    started = time.perf_counter()
    second = invoke(*args)
    assert second.stdout.count("skipped") == 4
    assert time.perf_counter() - started < 15

    status = invoke("status", "--results", str(tmp_path / "results"))
    assert "4 done" in status.stdout
    table = invoke("tables", "--results", str(tmp_path / "results"), "-f", "csv")
    assert table.exit_code == 0
    rows = table.stdout.strip().splitlines()[1:]
    assert [row.split(",")[1] for row in rows] == ["NoClip", "GlobalGC"]  # one row per setting...
    assert all(",2," in row for row in rows)  # ...pooling its two seeds (n = 2)
    per_run = invoke("tables", "--per-run", "--results", str(tmp_path / "results"))
    for run in runs:
        assert run.name in per_run.stdout


def test_status_reports_missing_runs_of_a_planned_sweep(tiny):
    result = invoke("status", "-m", "seed=5,6", *tiny())
    assert result.exit_code == 0
    assert "2 missing" in result.stdout


def test_a_failing_run_writes_failed_and_the_sweep_goes_on(tiny, tmp_path):
    bad = tmp_path / "missing.txt"
    result = runner.invoke(app, ["run", "-m", "data=text_files", f"data.paths=[{bad}]", "seed=0,1", *tiny()])
    assert result.exit_code == 1
    runs = sorted((tmp_path / "results" / "runs").iterdir())
    assert len(runs) == 2
    for run in runs:
        error = (run / "error.txt").read_text()
        assert (run / "FAILED").exists() and "no such file" in error
        assert "adagc_repro/worker.py" in error  # the traceback of the job's own worker process
    status = invoke("status", "--results", str(tmp_path / "results"))
    assert "2 failed" in status.stdout and "no such file" in status.stdout


def test_unwritable_results_dir_is_a_clear_error(tiny, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = runner.invoke(app, ["run", *tiny(f"paths.results={blocker / 'results'}")])
    assert result.exit_code != 0
    assert "paths.results" in result.output
    assert not (blocker.parent / "results").exists() or not any((blocker.parent / "results").iterdir())


def test_results_are_plain_files_readable_without_torch(tiny, tmp_path):
    invoke("run", *tiny("clip=none"))
    (run_dir,) = (tmp_path / "results" / "runs").iterdir()
    code = f"import json,sys; json.load(open({str(run_dir / 'summary.json')!r})); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert Path(run_dir / "DONE").read_text().strip()


def test_list_models_prints_exact_sizes():
    result = invoke("list", "models")
    assert result.exit_code == 0
    flat = result.stdout.replace("\n", " ")
    assert "llama2_7b" in flat and "6,738,415,616" in flat
    assert "llama2_13b" in flat and "13,015,864,320" in flat


def test_eval_verb_evaluates_a_finished_run(tiny, tmp_path, shared_data):
    invoke("run", *tiny())
    (run_dir,) = (tmp_path / "results" / "runs").iterdir()
    wikitext = shared_data / "wikitext-2" / "test.txt"
    result = invoke("eval", run_dir.name, "eval=wikitext", f"eval.wikitext.path={wikitext}",
                    "eval.wikitext.max_tokens=1500", "--results", str(tmp_path / "results"), "--device", "cpu")
    assert result.exit_code == 0, result.output
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["wikitext"]["ppl"] > 1 and evaluation["wikitext"]["tokens"] > 1000
    missing = runner.invoke(app, ["eval", "nosuchrun", "eval=wikitext", "--results", str(tmp_path / "results")])
    assert missing.exit_code == 2 and "nosuchrun" in missing.output
