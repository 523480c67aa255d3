"""Friendly errors: each bad input gives one line naming what was typed (or the file) and what is allowed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adagc_repro import runs
from adagc_repro.atomic import build_dir, write_json, write_text
from adagc_repro.cli import app
from adagc_repro.data.sources import text_files
from adagc_repro.errors import ConfigError

runner = CliRunner()


def one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("verb", ["run", "show", "status"])
def test_an_unknown_flag_is_named(verb, tmp_path):
    result = runner.invoke(app, [verb, "--stepz", "3", f"paths.results={tmp_path}"])
    assert result.exit_code == 2
    assert one_line(result).startswith("error: --stepz: unknown option (allowed: -m, --multirun, --results DIR")


@pytest.mark.parametrize("override", ["seed=ä", "clip=glöbal"])
def test_a_non_ascii_override_is_named_with_how_to_quote_it(override):
    result = runner.invoke(app, ["show", override])
    assert result.exit_code == 2
    line = one_line(result)
    assert line.startswith(f"error: {override}: cannot parse this override") and "quote" in line
    assert "Lexer" not in line


def test_run_accepts_results_and_a_non_ascii_folder(tmp_path):
    results = tmp_path / "résultats"
    result = runner.invoke(app, ["run", "--results", str(results), "clip=global", "train.steps=2",
                                 "train.batch_size=2", "train.seq_len=32", "train.val_batches=1",
                                 "train.val_every=0", "train.checkpoint_every=0", "train.progress=false",
                                 f"paths.checkpoints={tmp_path / 'ckpt'}"])
    assert result.exit_code == 0, result.output
    assert "hydra" not in result.output.lower()
    (run_dir,) = (results / "runs").iterdir()
    assert (run_dir / "DONE").exists()


def test_status_of_a_planned_sweep_names_model_clip_and_seed_of_missing_runs(tmp_path):
    result = runner.invoke(app, ["status", "-m", "--results", str(tmp_path), "clip=global,adagc", "seed=0,1"],
                           terminal_width=200)
    assert result.exit_code == 0
    rows = [line for line in result.output.splitlines() if "missing" in line and "llama_tiny" in line]
    assert len(rows) == 4
    assert sorted((("global" in r) + 2 * ("adagc" in r), r.split("│")[6].strip()) for r in rows) == [
        (1, "0"), (1, "1"), (2, "0"), (2, "1")]


def test_a_done_run_without_metrics_is_reported_damaged_not_done_0(tmp_path):
    folder = runs.run_dir(tmp_path, "abc")
    folder.mkdir(parents=True)
    write_text(folder / "config.yaml", "model: {name: m}\nclip: {name: global}\noptim: {name: adamw}\nseed: 3\n"
               "train: {steps: 20}\n")
    runs.mark_done(folder, {"steps": 20})
    row = runs.describe_run(folder)
    assert (row.status, row.step, row.steps) == ("damaged", 20, 20)
    assert "metrics.jsonl is missing" in row.error


def test_a_corrupt_results_file_is_named(tmp_path):
    from adagc_repro.reporting.results import load_runs

    folder = runs.run_dir(tmp_path, "abc")
    folder.mkdir(parents=True)
    write_text(folder / "config.yaml", "clip: {name: global}\n")
    runs.mark_done(folder, {"steps": 1})
    (folder / "summary.json").write_bytes(b"\xff\xfe{not json")
    with pytest.raises(ConfigError) as info:
        load_runs(tmp_path)
    assert info.value.key == str(folder / "summary.json") and "not valid JSON" in str(info.value)
    result = runner.invoke(app, ["tables", "--results", str(tmp_path)])
    assert result.exit_code == 2 and one_line(result).startswith(f"error: {folder / 'summary.json'}: not valid JSON")


def test_a_text_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        list(text_files(name="text_files", paths=[str(path)]).documents())
    assert str(info.value).startswith(f"data.paths: '{path}' is not UTF-8 text (byte 3")


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_result_files_and_folders_honour_the_umask(tmp_path, umask_022):
    write_text(tmp_path / "a.txt", "x")
    write_json(tmp_path / "b.json", {})
    build_dir(tmp_path / "final_model", lambda tmp: (Path(tmp) / "weights").write_text("w"))
    mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
    assert (mode(tmp_path / "a.txt"), mode(tmp_path / "b.json")) == (0o644, 0o644)
    assert mode(tmp_path / "final_model") == 0o755 and mode(tmp_path / "final_model" / "weights") == 0o644
    os.umask(0o077)
    write_text(tmp_path / "private.txt", "x")
    assert mode(tmp_path / "private.txt") == 0o600


def test_tables_out_and_report_files_are_readable_by_others(tmp_path, umask_022):
    result = runner.invoke(app, ["tables", "--results", str(tmp_path), "--out", str(tmp_path / "t"), "-f", "csv"])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((tmp_path / "t" / "runs.csv").stat().st_mode) == 0o644


def test_a_failed_runs_detail_is_printed_as_written_not_as_markup(capsys):
    from adagc_repro.cli import _print_outcomes
    from adagc_repro.launch import Outcome

    detail = "RuntimeError: [/pair.cc:537] Read error [bold]"  # as gloo words a lost peer (path shortened)
    _print_outcomes([Outcome("abc", "failed", detail)])
    printed = " ".join(capsys.readouterr().out.split())
    assert "[/pair.cc:537]" in printed and "[bold]" in printed
