"""The `adagc-repro` command line. Hydra overrides pass straight through; heavy imports stay lazy.

    adagc-repro run [OVERRIDES...] [-m]     one run, or a sweep over comma lists / experiment axes
    adagc-repro show [OVERRIDES...]         resolved config and run id, no training
    adagc-repro list [GROUP]                registered options of every config group
    adagc-repro status [OVERRIDES...] [-m]  done / failed / running / partial / missing
    adagc-repro tables | plot | report      tables and figures from results/ (no torch)
    adagc-repro eval RUN_ID...              perplexity and downstream accuracy of finished runs
    adagc-repro bench step [OVERRIDES...]   the training loop against a plain compiled loop, same shapes
    adagc-repro bench clip                  clipper cost against clip_grad_norm_ in the same process
    adagc-repro bench summary DIR           Markdown of the benchmark JSON under DIR (no torch)
    adagc-repro data prepare data=NAME      tokenize a source once into memory-mapped shards
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from adagc_repro.errors import ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0],
                  context_settings={"help_option_names": ["-h", "--help"]})
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}
def _register_reporting() -> None:
    """tables / plot / report live in adagc_repro.reporting (pure Python, no torch)."""
    from adagc_repro.reporting import commands

    app.command("tables")(commands.tables)
    app.command("plot")(commands.plot)
    app.command("report")(commands.report)


def _register_benchmarks() -> None:
    """bench step / bench clip live in adagc_repro.benchmarks (torch is imported only when they run)."""
    from adagc_repro.benchmarks.commands import bench_app

    app.add_typer(bench_app, name="bench")


GROUPS = ("model", "clip", "optim", "schedule", "data", "train", "parallel", "launcher", "logger", "eval", "spike", "paths",
          "experiment", "scale")


MULTIRUN_FLAGS = ("-m", "--multirun")
ResultsOverride = typer.Option(None, "--results", help="results root (same as paths.results=DIR)")


def _split_multirun(args: list[str], results: Path | None = None) -> tuple[list[str], bool]:
    """Overrides and the multirun flag; any other flag is refused here, before Hydra tries to parse it."""
    unknown = [a for a in args if a.startswith("-") and a not in MULTIRUN_FLAGS]
    if unknown:
        _fail(ConfigError(unknown[0], "unknown option", [*MULTIRUN_FLAGS, "--results DIR", "KEY=VALUE overrides"]))
    overrides = [a for a in args if a not in MULTIRUN_FLAGS]
    if results is not None:
        overrides.append(f"paths.results={_hydra_quoted(results)}")
    return overrides, any(a in MULTIRUN_FLAGS for a in args)


def _hydra_quoted(value) -> str:
    """A value Hydra's override grammar reads back verbatim, whatever characters it holds."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _warn(jobs) -> None:
    """One line per legal-but-suspicious setting of the planned jobs (each line once per sweep)."""
    from adagc_repro.config import suspicious_settings

    for line in dict.fromkeys(note for job in jobs for note in suspicious_settings(job.cfg)):
        typer.secho(f"warning: {line}", err=True, fg="yellow")


def _fail(exc: ConfigError) -> None:
    typer.secho(f"error: {exc}", err=True, fg="red")
    raise typer.Exit(2)


def _console():
    from rich.console import Console

    return Console()


@app.command(context_settings=PASS_THROUGH)
def run(ctx: typer.Context, results: Path = ResultsOverride) -> None:
    """Train one config, or with -m every combination of comma lists and experiment axes.

    Runs are content-addressed: DONE runs are skipped (force=true redoes them), failed and partial
    runs are retried, and an interrupted run resumes from its last checkpoint.
    """
    from adagc_repro import launch, runs

    overrides, multirun = _split_multirun(ctx.args, results)
    try:
        jobs = launch.plan(overrides, multirun)
        launch.ensure_writable(jobs[0].results)
    except ConfigError as exc:
        _fail(exc)
    _warn(jobs)
    results = jobs[0].results
    if multirun:
        identifier = runs.write_sweep_manifest(
            results, command=sys.argv, overrides=overrides, experiment=jobs[0].cfg.meta.experiment,
            jobs=[(job.run_id, job.overrides) for job in jobs],
        )
        typer.echo(f"sweep {identifier}: {len(jobs)} runs")
    outcomes = _run_with_hydra(overrides, multirun, results, jobs)
    _print_outcomes(outcomes)
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(1)
    if any(o.status == "interrupted" for o in outcomes):
        raise typer.Exit(130)


def _run_with_hydra(overrides: list[str], multirun: bool, results: Path, jobs) -> list:
    """Hand the jobs to Hydra's sweeper and launcher (only the basic ones are tested); each job calls
    launch.run_job."""
    import hydra

    from adagc_repro import config as config_lib
    from adagc_repro import launch, runs

    outcomes = []
    if multirun:
        folder = results / "sweeps" / runs.sweep_id([job.run_id for job in jobs]) / "hydra"
        location = [f"hydra.sweep.dir={_hydra_quoted(folder)}", "-m"]
    else:
        location = [f"hydra.run.dir={_hydra_quoted(jobs[0].run_dir)}"]
    argv = list(sys.argv)
    own_process = len(jobs) > 1  # a sweep's jobs must not share CUDA state, compile caches or leaks

    def task(cfg) -> None:
        if any(o.status == "interrupted" for o in outcomes):  # a stop signal stops the sweep, not only its job
            outcomes.append(launch.Outcome(config_lib.run_id(cfg), "not started", "the sweep was stopped"))
            return
        outcomes.append(launch.run_job(cfg, argv, own_process=own_process))

    config_lib.register_schemas()
    entry = hydra.main(version_base="1.3", config_path=str(config_lib.conf_dir()), config_name="config")(task)
    saved, sys.argv = sys.argv, [sys.argv[0], *overrides, *location]
    try:
        entry()
    finally:
        sys.argv = saved
    return outcomes


def _print_outcomes(outcomes) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table("run", "status", "final train loss", "val ppl", "detail", title="runs")
    for o in outcomes:
        loss = o.summary.get("final_train_loss")
        ppl = o.summary.get("val_ppl")
        # Text: an error message is not markup ('[/path/pair.cc:537]' made rich raise MarkupError)
        table.add_row(o.run_id, o.status, f"{loss:.4f}" if loss else "", f"{ppl:.2f}" if ppl else "", Text(o.detail))
    _console().print(table)


@app.command(context_settings=PASS_THROUGH)
def show(ctx: typer.Context, results: Path = ResultsOverride) -> None:
    """Print the resolved config, run id and run status for OVERRIDES (no training)."""
    from adagc_repro import launch, runs
    from adagc_repro.config import to_yaml

    overrides, multirun = _split_multirun(ctx.args, results)
    try:
        jobs = launch.plan(overrides, multirun)
    except ConfigError as exc:
        _fail(exc)
    _warn(jobs)
    for job in jobs:
        typer.echo(f"# run {job.run_id} ({runs.status_of(job.run_dir)}): {job.run_dir}")
        if not multirun:
            typer.echo(to_yaml(job.cfg))


@app.command("list")
def list_options(group: str = typer.Argument(None, help=f"one of: {', '.join(GROUPS)}; models adds sizes")) -> None:
    """List the options of each config group (what `group=name` accepts)."""
    from adagc_repro.config import conf_dir, group_options

    if group == "models":
        return _list_models(conf_dir())
    names = {"experiments": "experiment", "clippers": "clip", "optimizers": "optim", "datasets": "data"}
    chosen = [names.get(group, group)] if group else GROUPS
    for name in chosen:
        if name not in GROUPS:
            _fail(ConfigError("list", f"unknown group '{group}'", [*GROUPS, "models"]))
        typer.echo(f"{name}: {', '.join(group_options(name)) or '-'}")


def _list_models(conf: Path) -> None:
    from rich.table import Table

    from adagc_repro.models import describe_presets

    table = Table("model", "family", "parameters", "GFLOP/token", title="model presets")
    for row in describe_presets(conf / "model"):
        table.add_row(row["name"], row["family"], f"{row['params']:,}", f"{row['flops_per_token'] / 1e9:.3f}")
    _console().print(table)


@app.command(context_settings=PASS_THROUGH)
def status(ctx: typer.Context, results: Path = ResultsOverride) -> None:
    """Runs done / failed / running / partial / damaged, and with OVERRIDES (and -m) the ones still missing."""
    from rich.table import Table

    from adagc_repro import launch, runs

    overrides, multirun = _split_multirun(ctx.args, results)
    if ctx.args:
        try:
            jobs = launch.plan(overrides, multirun)
        except ConfigError as exc:
            _fail(exc)
        planned = [(job.run_dir, job.cfg) for job in jobs]
    else:
        planned = [(folder, None) for folder in runs.all_runs(results or Path("results"))]
    table = Table("run", "status", "model", "clip", "optim", "seed", "step", title="status")
    counts: dict[str, int] = {}
    errors = []
    for folder, cfg in planned:
        row = runs.describe_run(folder, cfg)
        counts[row.status] = counts.get(row.status, 0) + 1
        table.add_row(row.run_id, row.status, row.model, row.clip, row.optim, str(row.seed), f"{row.step}/{row.steps}")
        if row.error:
            errors.append(f"{row.run_id}: {row.error}")
    console = _console()
    console.print(table)
    for line in errors:
        console.print(line, soft_wrap=True, markup=False)
    console.print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no runs")


@app.command("eval", context_settings=PASS_THROUGH)
def evaluate(
    ctx: typer.Context,
    results: Path = typer.Option(Path("results"), help="results root"),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]"),
) -> None:
    """Evaluate finished runs from their final model: RUN_ID... [eval=NAME] [eval.KEY=VALUE...]."""
    from adagc_repro.eval.commands import eval_command

    run_ids = [arg for arg in ctx.args if "=" not in arg]
    overrides = [arg for arg in ctx.args if "=" in arg]
    if not run_ids:
        _fail(ConfigError("RUN_ID", "name at least one run to evaluate (see `adagc-repro status`)"))
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        eval_command(run_ids, overrides, results, device)
    except ConfigError as exc:
        _fail(exc)


_register_reporting()
_register_benchmarks()


def _register_data() -> None:
    from adagc_repro.data.commands import app as data_app

    app.add_typer(data_app, name="data")


_register_data()


def main() -> None:
    # Offline-safe defaults for anything started from the CLI; users online keep hub access.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    app()


if __name__ == "__main__":
    main()
