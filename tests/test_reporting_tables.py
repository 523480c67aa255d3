"""Tables from a synthetic results/ tree: run rows, golden outputs for every table and format, the CLI verb.

Regenerate the golden files after an intended change with
    ADAGC_UPDATE_GOLDEN=1 python -m pytest tests/test_reporting_tables.py
and review the diff.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from fixtures.reporting_results import make_results
from typer.testing import CliRunner

from adagc_repro.errors import ConfigError
from adagc_repro.reporting import commands, experiments
from adagc_repro.reporting.formats import FORMATS, render
from adagc_repro.reporting.reported import load_reported
from adagc_repro.reporting.results import excluded_counts, load_runs
from adagc_repro.reporting.tables import TABLE_BUILDERS

GOLDEN = Path(__file__).parent / "fixtures" / "reporting_golden"
GROUPS = (
    "runs",
    "table_spike",
    "table_accuracy",
    "table_optimizers",
    "table_grid",
    "table_locality",
    "table_zclip_lr",
)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results_root(tmp_path_factory) -> Path:
    return make_results(tmp_path_factory.mktemp("results"))


def _tables(root: Path, group: str):
    return (
        [experiments.overview_table(root)] if group == "runs" else experiments.experiment_tables(root, group)
    )


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("group", GROUPS)
def test_golden(results_root, group, fmt):
    text = "\n".join(render(table, fmt) for table in _tables(results_root, group))
    golden = GOLDEN / f"{group}.{fmt}"
    if os.environ.get("ADAGC_UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()


def test_load_runs_flattens_summary_config_and_eval(results_root):
    runs = load_runs(results_root)
    assert len(runs) == 47  # 49 run folders, one FAILED and one without a marker
    row = runs.set_index("run_id").loc["spike-adagc-adamw-0"]
    assert row["method"] == "AdaGC" and row["model.name"] == "qwen3_1_7b" and row["meta.table"] == "spike"
    assert row["spike_score.olmo2.counts.any"] == 0 and row["optim.lr"] == 1e-3
    assert row["acc.hellaswag"] == pytest.approx(0.42) and row["acc.winogrande"] == pytest.approx(0.47)
    assert row["lm_eval.avg_acc"] == pytest.approx(0.445) and row["eval.step"] == 300
    grid = load_runs(results_root, experiment="table_grid")
    assert sorted(grid["clip.lambda_rel"].dropna().unique()) == [1.03, 1.05]
    assert len(load_runs(results_root, sweep="sweep-spike")) == 9
    assert excluded_counts(results_root, experiment="table_spike") == {"failed": 1, "partial": 1}
    with pytest.raises(ConfigError, match="no sweep 'nope'"):
        load_runs(results_root, sweep="nope")


def test_spike_table_cells(results_root):
    (table,) = experiments.experiment_tables(results_root, "table_spike")
    rows = {
        (r[0], r[1], r[2]): dict(zip([c.label for c in table.columns], r, strict=True)) for r in table.rows
    }
    adagc = rows[("Qwen3-1.7B", "AdaGC", "olmo2")]
    # AdaGC seeds have 0, 1, 0 spikes against GlobalGC's 3, 4, 3: Welch p = 0.0013.
    assert (adagc["Spikes any"].mean, adagc["Spikes any"].n, adagc["Spikes any"].mark) == (
        pytest.approx(1 / 3),
        3,
        "**",
    )
    assert adagc["Spikes any (reported)"].value == 1 and adagc["Spikes any (reported)"].secondary
    assert rows[("Qwen3-1.7B", "GlobalGC", "olmo2")]["Spikes any"].mark == ""  # the baseline itself
    assert rows[("Llama-2 7B", "AdaGC", "–")]["Spikes any"] is None  # reported only
    assert any("1 failed, 1 partial" in note for note in table.notes)
    assert any("σ" in note and "olmo2" in note for note in table.notes)


def test_zclip_table_joins_lr_and_z_thres(results_root):
    (table,) = experiments.experiment_tables(results_root, "table_zclip_lr")
    labels = [c.label for c in table.columns]
    rows = {(r[0], r[1], r[2]): dict(zip(labels, r, strict=True)) for r in table.rows}
    high = rows[("3e-3", "ZClip", "2.0")]
    assert (
        high["Final train loss (reported)"].value == 2.14
        and not high["Final train loss (reported)"].secondary
    )
    assert high["Final train loss"].mark == "**"  # against GlobalGC at the same LR despite its other z_thres
    assert rows[("1e-3", "GlobalGC", "–")]["Spikes (reported)"].value == 6
    assert rows[("5e-3", "ZClip", "2.0")]["Final train loss"] is None  # a paper row without runs


def test_csv_is_machine_readable(results_root):
    (table,) = experiments.experiment_tables(results_root, "table_locality")
    rows = list(csv.DictReader(io.StringIO(render(table, "csv"))))
    adagc = next(r for r in rows if r["Method"] == "AdaGC")
    assert float(adagc["Val loss"]) == pytest.approx(3.305) and adagc["Val loss n"] == "2"
    assert float(adagc["Val loss p"]) < 0.01 and float(adagc["Val loss std"]) == pytest.approx(
        0.00707107, rel=1e-5
    )


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("tables")(commands.tables)
    app.command("plot")(commands.plot)
    app.command("report")(commands.report)
    return app


def test_tables_command(results_root, tmp_path):
    runner = CliRunner()
    printed = runner.invoke(_cli(), ["tables", "--results", str(results_root)])
    assert printed.exit_code == 0 and printed.output.startswith("### All runs")
    out = tmp_path / "tables"
    written = runner.invoke(
        _cli(),
        [
            "tables",
            "experiment=all",
            "--format",
            "csv,tex",
            "--out",
            str(out),
            "--results",
            str(results_root),
        ],
    )
    assert written.exit_code == 0, written.output
    names = sorted(p.name for p in out.iterdir())
    assert "table_spike.csv" in names and "table_zclip_lr.tex" in names and "table_grid_val_loss.csv" in names
    sweep = runner.invoke(
        _cli(), ["tables", "--sweep", "sweep-spike", "-f", "csv", "--results", str(results_root)]
    )
    assert sweep.exit_code == 0 and len(sweep.output.strip().splitlines()) == 1 + 3  # 3 methods × 3 seeds
    per_run = runner.invoke(
        _cli(), ["tables", "--sweep", "sweep-spike", "--per-run", "-f", "csv", "--results", str(results_root)]
    )
    assert per_run.exit_code == 0 and len(per_run.output.strip().splitlines()) == 1 + 9
    bad = runner.invoke(_cli(), ["tables", "--format", "xlsx", "--results", str(results_root)])
    assert (
        bad.exit_code == 2
        and "error: --format: unknown format xlsx (allowed: md, csv, tex, html)" in bad.output
    )
    unknown = runner.invoke(_cli(), ["tables", "model=x", "--results", str(results_root)])
    assert unknown.exit_code == 2 and "unknown argument 'model=x'" in unknown.output


def test_reporting_never_imports_torch(results_root, tmp_path):
    """tables, plot and report run in a fresh interpreter without importing torch."""
    script = f"""
import sys
from pathlib import Path
from adagc_repro.reporting import commands
root = Path({str(results_root)!r})
commands.tables(["experiment=all"], "md,csv,tex,html", Path({str(tmp_path / "t")!r}), None, root)
commands.tables(None, "md", None, None, root)
commands.plot(["table_locality"], Path({str(tmp_path / "p")!r}), False, root)
commands.report("table_zclip_lr", Path({str(tmp_path / "r")!r}), root)
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_every_reported_number_has_a_source():
    data = load_reported()
    numbers = 0
    for kind, table in data["tables"].items():
        assert kind in TABLE_BUILDERS
        for row in table["rows"]:
            assert row["source"] in data["sources"], row
            # rows from a third-party summary carry secondary: true, exactly like their source
            assert row["secondary"] is data["sources"][row["source"]]["secondary"], row
            numbers += sum(isinstance(v, int | float) and not isinstance(v, bool) for v in row.values())
    for claim in data["claims"]:
        assert claim["secondary"] is data["sources"][claim["source"]]["secondary"]
    assert numbers > 100
