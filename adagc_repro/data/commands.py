"""`adagc-repro data prepare data=... [--workers N]`: tokenize a source into shards ahead of training."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from adagc_repro.errors import ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Prepare and inspect pre-tokenized data.")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def prepare(
    ctx: typer.Context,
    workers: int = typer.Option(0, help="tokenizer processes (0: one per available core, at most 16)"),
    out: Path = typer.Option(None, help="also write {folder, seconds, MB/s, counts} as JSON here"),
) -> None:
    """Tokenize data=NAME [data.KEY=VALUE...] once into memory-mapped shards (resumable; cached)."""
    from adagc_repro.config import compose
    from adagc_repro.data.shards import load_manifest
    from adagc_repro.data.shards import prepare as prepare_shards

    try:
        cfg = compose(list(ctx.args))
        started = time.perf_counter()
        folder = prepare_shards(cfg.data, Path(cfg.paths.cache), workers=workers or None, progress=True)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(2) from exc
    seconds = time.perf_counter() - started
    manifest = load_manifest(folder)
    summary = {key: manifest[key] for key in ("fingerprint", "content_hash", "documents", "tokens", "text_bytes", "dtype")}
    typer.echo(f"{folder}\n{json.dumps(summary)}")
    if out:
        from adagc_repro.atomic import write_json

        write_json(out, {"folder": str(folder), "seconds": seconds, "mb_per_s": manifest["text_bytes"] / 1e6 / seconds,
                         "source": manifest["source"], **summary})
