"""The `bench` sub-commands: `bench step` (the training loop against plain compiled loops), `bench clip`
(every clipper against clip_grad_norm_) and `bench summary` (Markdown from their JSON)."""

from __future__ import annotations

from pathlib import Path

import typer

from adagc_repro.errors import ConfigError

bench_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmarks measured in one process.")


@bench_app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def step(
    ctx: typer.Context,
    out: Path = typer.Option(None, help="write the result as JSON here"),
    profile: Path = typer.Option(None, help="profile three steady steps of each loop into this folder"),
) -> None:
    """OVERRIDES (model=… clip=… train.steps=…): tokens/s, MFU, peak memory and clipping's share of a step
    for the project's loop, a plain compiled loop on the same shapes and that loop with the project's
    attention, and the project's ratio to each."""
    from adagc_repro.atomic import write_json
    from adagc_repro.benchmarks.step import run_step_bench
    from adagc_repro.benchmarks.summary import format_step_table

    try:
        result = run_step_bench(list(ctx.args), profile)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(2) from None
    typer.echo(format_step_table(result))
    if out is not None:
        write_json(out, result)
        typer.echo(f"wrote {out}")


@bench_app.command()
def clip(
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]"),
    sizes: str = typer.Option("tiny", help="comma list of gradient sets: tiny, 134m, 1.35b, 7b-shaped"),
    repeats: int = typer.Option(20, help="timed repetitions per clipper"),
    impl: str = typer.Option("eager", help="comma list: eager (reference), compiled (Clipper.compile()), "
                                           "folded (inside AdamW's update; needs --optimizer adamw)"),
    clippers: str = typer.Option(None, help="comma list of clipper names (default: all)"),
    optimizer: str = typer.Option(None, help="adamw: time each call with an AdamW step after it, plus AdamW alone"),
    out: Path = typer.Option(None, help="write the rows as JSON here"),
) -> None:
    """Time every clipper per step against clip_grad_norm_(foreach=True) measured in the same run."""
    from adagc_repro.clipping.bench import main as bench_main

    bench_main(["--device", device, "--sizes", sizes, "--repeats", str(repeats), "--impl", impl,
                *(["--clippers", clippers] if clippers else []), *(["--optimizer", optimizer] if optimizer else []),
                *(["--out", str(out)] if out else [])])




@bench_app.command()
def summary(
    root: Path = typer.Argument(..., help="a folder with bench_step_*.json / bench_clip*.json files, searched recursively"),
    out: Path = typer.Option(None, help="write the Markdown here (default: print it)"),
    title: str = typer.Option("Benchmarks", help="the page's title"),
) -> None:
    """Markdown of every `bench step` and `bench clip` result under ROOT, a section per folder, and with
    several folders the `bench step` ratios over time against the targets."""
    from adagc_repro.atomic import write_text
    from adagc_repro.benchmarks.summary import summary_markdown

    try:
        text = summary_markdown(root, title)
    except FileNotFoundError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(2) from None
    if out is None:
        typer.echo(text, nl=False)
    else:
        write_text(out, text)
        typer.echo(f"wrote {out}")
