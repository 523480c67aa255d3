"""Tables pool only the seeds of one setting, show every key that varies, and carry evaluation metrics."""

from __future__ import annotations

import csv
import io

import pytest
from fixtures.reporting_results import write_run
from typer.testing import CliRunner

from adagc_repro.errors import ConfigError
from adagc_repro.reporting import commands, experiments
from adagc_repro.reporting.formats import FORMATS, StatCell, render
from adagc_repro.reporting.report import write_report
from adagc_repro.reporting.results import load_runs
from adagc_repro.reporting.tables import run_configs, varying_keys


def _locality(root, run_id, clip, seed, **config):
    """A table_locality run whose config.yaml also sets the given (dotted) keys."""
    import yaml

    run_dir = write_run(root, run_id, model="llama_tiny", clip=clip, seed=seed, experiment="table_locality",
                        table="locality", **{k: v for k, v in config.items() if k in ("lr",)})
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    for dotted, value in config.items():
        if dotted == "lr":
            continue
        group, key = dotted.split(".")
        cfg.setdefault(group, {})[key] = value
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run_dir


def _rows(table):
    labels = [c.label for c in table.columns]
    return [dict(zip(labels, row, strict=True)) for row in table.rows]


def test_runs_that_differ_in_more_than_the_seed_are_never_pooled(tmp_path):
    # The case: the same experiment run twice, the second time with other steps and LR.
    _locality(tmp_path, "a", "global", 0, **{"train.steps": 2})
    _locality(tmp_path, "b", "global", 0, lr=3e-3, **{"train.steps": 3})
    (table,) = experiments.experiment_tables(tmp_path, "table_locality")
    rows = _rows(table)
    assert [(r["optim.lr"], r["train.steps"]) for r in rows] == [("0.001", "2"), ("0.003", "3")]
    assert all(r["Final train loss"].n == 1 for r in rows)


def test_seeds_of_one_setting_share_a_row_with_mean_std_n(tmp_path):
    for seed in (0, 1, 2):
        _locality(tmp_path, f"g{seed}", "global", seed)
        _locality(tmp_path, f"a{seed}", "adagc", seed)
    table = experiments.overview_table(tmp_path)
    rows = {r["Method"]: r for r in _rows(table)}
    cell = rows["AdaGC"]["Final train loss"]
    assert isinstance(cell, StatCell) and cell.n == 3
    assert cell.mean == pytest.approx((3.20 + 3.21 + 3.22) / 3) and cell.std == pytest.approx(0.01)
    assert cell.mark == "**" and rows["GlobalGC"]["Final train loss"].mark == ""
    assert len(experiments.overview_table(tmp_path, per_run=True).rows) == 6


def test_overview_shows_a_column_for_every_varying_key(tmp_path):
    _locality(tmp_path, "a", "adagc", 0)
    _locality(tmp_path, "b", "adagc", 0, lr=3e-3)
    _locality(tmp_path, "c", "adagc", 0, **{"clip.beta": 0.9})
    runs = load_runs(tmp_path)
    assert varying_keys(run_configs(runs), ("clip.name",)) == ["clip.beta", "optim.lr"]
    for per_run in (False, True):
        table = experiments.overview_table(tmp_path, per_run=per_run)
        rows = _rows(table)
        assert sorted((r["optim.lr"], r["clip.beta"]) for r in rows) == [
            ("0.001", "0.9"), ("0.001", "–"), ("0.003", "–")]


def test_keys_that_follow_from_the_method_get_no_column(tmp_path):
    _locality(tmp_path, "a", "global", 0, **{"clip.max_norm": 1.0})
    _locality(tmp_path, "b", "adagc", 0, **{"clip.beta": 0.99})
    assert varying_keys(run_configs(load_runs(tmp_path)), ("clip.name",)) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_evaluation_metrics_reach_every_format(tmp_path, fmt):
    run_dir = _locality(tmp_path, "a", "adagc", 0)
    write_run(tmp_path, "b", model="llama_tiny", clip="global", seed=0, experiment="x", table="locality")
    evaluation = '{"step": 300, "wikitext": {"ppl": 31.25, "bits_per_byte": 1.2345}, "lm_eval": {"tasks": ' \
                 '{"piqa": {"acc": 0.6, "acc_norm": 0.625}}, "metric_used": {"piqa": "acc_norm"}, "avg_acc": 0.625}}'
    (run_dir / "eval.json").write_text(evaluation)
    text = render(experiments.overview_table(tmp_path), fmt)
    for label, value in (("WikiText ppl", "31.25"), ("WikiText bits/byte", "1.2345"), ("piqa %", "62.5"),
                         ("Avg acc %", "62.5")):
        assert label.replace("%", "\\%" if fmt == "tex" else "%") in text and value in text
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        assert float(next(r for r in rows if r["Method"] == "AdaGC")["WikiText bits/byte"]) == 1.2345


def test_report_carries_evaluation_metrics(tmp_path):
    run_dir = _locality(tmp_path, "a", "adagc", 0)
    (run_dir / "eval.json").write_text('{"wikitext": {"ppl": 31.25, "bits_per_byte": 1.2345}}')
    html_path, md_path = write_report(tmp_path, "all", tmp_path / "report")
    assert "WikiText bits/byte" in md_path.read_text() and "1.2345" in html_path.read_text()


def test_spike_columns_show_one_preset_unless_asked(tmp_path):
    _locality(tmp_path, "a", "adagc", 0)
    labels = lambda spike: [c.label for c in experiments.overview_table(tmp_path, spike=spike).columns]  # noqa: E731
    assert [label for label in labels("olmo2") if "Spike" in label] == [
        "Spike % loss (olmo2)", "Spike % grad_norm (olmo2)", "Spike % any (olmo2)"]
    assert sum("sigma10" in label for label in labels("all")) == 3
    assert sum("olmo2" in label for label in labels("sigma10")) == 0
    with pytest.raises(ConfigError, match="--spike: no run has the spike preset 'nope'"):
        labels("nope")


def test_tables_of_an_unknown_experiment_say_so(tmp_path):
    _locality(tmp_path, "a", "adagc", 0)
    from typer.main import Typer

    app = Typer()
    app.command("tables")(commands.tables)
    app.command("plot")(commands.plot)
    result = CliRunner().invoke(app, ["tables", "experiment=foo", "--results", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.startswith("error: experiment: unknown experiment 'foo' (allowed: ")
    assert "table_accuracy" in result.output and "spike_lab" in result.output
