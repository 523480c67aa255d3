"""WikiText text for perplexity: a local file, or the Hugging Face `wikitext` data set when cached/online."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from adagc_repro.errors import ConfigError

_OFFLINE_VALUES = {"1", "true", "yes", "on"}


def _is_offline() -> bool:
    return any(
        os.environ.get(var, "").strip().lower() in _OFFLINE_VALUES
        for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    )


def _join_rows(rows: Iterable[str]) -> str:
    """One text from data-set rows. WikiText rows are lines that keep their newline (blank lines are
    empty rows); stripping it and joining with newlines restores the article layout."""
    return "\n".join(row.removesuffix("\n") for row in rows)


def _text_column(rows, source: str) -> list[str]:
    if "text" not in rows.column_names:
        raise ConfigError("eval.wikitext.path", f"{source} has no 'text' column", rows.column_names)
    return rows["text"]


def _read_local(path: Path, split: str) -> str:
    if not path.exists():
        raise ConfigError("eval.wikitext.path", f"{path} does not exist")
    if path.is_dir():
        import datasets

        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ConfigError("eval.wikitext.split", f"{path} has no split '{split}'", list(loaded))
            loaded = loaded[split]
        return _join_rows(_text_column(loaded, str(path)))
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as lines:
            return _join_rows(json.loads(line)["text"] for line in lines if line.strip())
    if path.suffix == ".parquet":
        import datasets

        return _join_rows(_text_column(datasets.Dataset.from_parquet(str(path)), str(path)))
    return path.read_text(encoding="utf-8")


def load_wikitext(path: str | None, name: str = "wikitext-2-raw-v1", split: str = "test") -> str:
    """The evaluation text.

    With `path`: a local .txt file (read as is), a .jsonl or .parquet file, or a directory written by
    `datasets.save_to_disk`, the last three with a `text` column. Without: `wikitext/<name>` from
    the Hugging Face hub or its cache. Offline without a cached copy this fails at once with a
    ConfigError that says how to fix it.
    """
    if path:
        return _read_local(Path(path).expanduser(), split)
    import datasets

    try:
        rows = datasets.load_dataset("wikitext", name, split=split)
    except Exception as error:  # the hub, the cache and the builder each raise their own types
        if _is_offline():
            problem = (
                f"wikitext/{name} ({split}) is offline and not cached; download once online "
                "or set eval.wikitext.path=<file>"
            )
        else:
            problem = f"could not load wikitext/{name} ({split}): {error}; set eval.wikitext.path=<file>"
        raise ConfigError("eval.wikitext.path", problem) from error
    return _join_rows(rows["text"])
