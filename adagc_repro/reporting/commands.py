"""CLI verbs `tables`, `plot` and `report` (Typer-annotated; cli.py registers them with app.command).

They read results/ only and never import torch. pandas and matplotlib are imported when a verb runs,
so registering the verbs keeps `adagc-repro --help` fast. A bad argument ends the command with one
line (`error: <key>: <problem> (allowed: ...)`) and exit status 2.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from adagc_repro.errors import ConfigError
from adagc_repro.reporting import DEFAULT_SPIKE_PRESET
from adagc_repro.reporting.formats import FORMATS, SUFFIX

ResultsOption = Annotated[Path, typer.Option("--results", help="results root to read")]


@contextlib.contextmanager
def _one_line_errors():
    try:
        yield
    except ConfigError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(2) from None


def _experiment_argument(overrides: list[str] | None) -> str | None:
    experiment = None
    for item in overrides or []:
        key, _, value = item.partition("=")
        if key != "experiment" or not value:
            raise ConfigError("tables", f"unknown argument '{item}'", ["experiment=NAME", "experiment=all"])
        experiment = value
    return experiment


def _formats(text: str) -> list[str]:
    chosen = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise ConfigError("--format", f"unknown format {', '.join(unknown) or repr(text)}", FORMATS)
    return chosen


def _emit(built: list, formats: list[str], out: Path | None) -> None:
    from adagc_repro.atomic import write_text
    from adagc_repro.reporting.formats import render

    for table in built:
        for fmt in formats:
            text = render(table, fmt)
            if out is None:
                typer.echo(text)
            else:
                path = Path(out) / f"{table.name}{SUFFIX[fmt]}"
                write_text(path, text)
                typer.echo(path)


def tables(
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="experiment=NAME (a conf/experiment file or run group) or experiment=all"),
    ] = None,
    format: Annotated[
        str, typer.Option("--format", "-f", help=f"{', '.join(FORMATS)}; comma-separated for several")
    ] = "md",
    out: Annotated[
        Path | None, typer.Option("--out", help="write one file per table here instead of printing")
    ] = None,
    sweep: Annotated[str | None, typer.Option("--sweep", help="only the runs of this sweep id (or folder)")] = None,
    results: ResultsOption = Path("results"),
    per_run: Annotated[
        bool, typer.Option("--per-run", help="one row per run instead of mean ± std over the seeds of a setting")
    ] = False,
    spike: Annotated[
        str, typer.Option("--spike", help="spike-score preset to show: olmo2, olmo_core, sigma10 or all")
    ] = DEFAULT_SPIKE_PRESET,
) -> None:
    """Print or write tables: all runs (default), one sweep's runs, or the papers' tables of an experiment.

    Runs that differ only in seed share a row: mean ± std (n), Welch's p against GlobalGC at that setting,
    and a column for every config key that varies between the rows.
    """
    from adagc_repro.reporting import experiments

    with _one_line_errors():
        experiment = _experiment_argument(overrides)
        formats = _formats(format)
        if experiment is None:
            if sweep and (Path(sweep) / "manifest.json").exists():  # a sweep folder: results/sweeps/<id>
                results, sweep = Path(sweep).parent.parent, Path(sweep).name
            _emit([experiments.overview_table(results, sweep, per_run=per_run, spike=spike)], formats, out)
            return
        if experiment == experiments.ALL:
            built = experiments.all_tables(results, spike)
        else:
            built = experiments.experiment_tables(results, experiment, spike)
        if not built:
            typer.echo(f"no finished runs for experiment={experiment} under {results}", err=True)
        _emit(built, formats, out)


def _run_dirs(results: Path, target: str) -> list[Path]:
    """A run folder or id, a sweep folder or id, or an experiment -> finished run dirs."""
    from adagc_repro import runs as run_files
    from adagc_repro.reporting import experiments
    from adagc_repro.reporting.results import load_runs, sweep_run_ids

    path = Path(target)
    if (path / "manifest.json").exists():  # a sweep folder: results/sweeps/<id>
        results, target = path.parent.parent, path.name
    if (path / "metrics.jsonl").exists():
        return [path]
    if (run_files.run_dir(results, target) / "metrics.jsonl").exists():
        return [run_files.run_dir(results, target)]
    if (results / "sweeps" / target / "manifest.json").exists():
        folders = [run_files.run_dir(results, i) for i in sweep_run_ids(results, target)]
        return [folder for folder in folders if (folder / "metrics.jsonl").exists()]
    group, kind = experiments.resolve(target)
    runs = load_runs(results, experiment=experiments.selection_names(group, kind))
    if len(runs) == 0:
        raise ConfigError(
            "plot", f"'{target}' is not a run or sweep (folder or id) or an experiment with finished runs"
        )
    return [Path(d) for d in runs["run_dir"]]


def plot(
    targets: Annotated[list[str], typer.Argument(help="run or sweep folders or ids, or experiment names")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="folder for the figures (default results/plots/<first target>)"),
    ] = None,
    log_scale: Annotated[bool, typer.Option("--log-scale", help="log y axes")] = False,
    results: ResultsOption = Path("results"),
    smooth: Annotated[int, typer.Option("--smooth", help="average each curve over this many steps", min=1)] = 1,
) -> None:
    """Loss and grad-norm curves (mean over seeds, min–max band, spikes marked) and clip-rate heatmaps."""
    from adagc_repro.reporting.plots import plot_clip_heatmap, plot_runs

    with _one_line_errors():
        run_dirs = list(dict.fromkeys(d for target in targets for d in _run_dirs(results, target)))
    out = out or results / "plots" / Path(targets[0]).name
    written = plot_runs(run_dirs, out, log_scale=log_scale, smooth=smooth)
    for run_dir in run_dirs:
        written += plot_clip_heatmap(run_dir, out)
    for path in written:
        typer.echo(path)


def report(
    target: Annotated[str, typer.Argument(help="run or sweep folder or id, experiment name, or 'all'")],
    out: Annotated[
        Path | None, typer.Option("--out", help="folder for report.html, report.md and figures/")
    ] = None,
    results: ResultsOption = Path("results"),
) -> None:
    """One self-contained HTML page (and Markdown) with the tables and figures."""
    from adagc_repro.reporting.report import default_out_dir, write_report

    with _one_line_errors():
        html_path, md_path = write_report(results, target, out or default_out_dir(results, target))
    typer.echo(html_path)
    typer.echo(md_path)
