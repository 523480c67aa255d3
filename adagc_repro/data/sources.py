"""Where documents come from: the embedded stdlib corpus, local files, or a Hugging Face data set.

Each source returns a list of documents (strings); tokenising, splitting and packing are shared.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from adagc_repro.atomic import write_json
from adagc_repro.data.hub import offline_guard
from adagc_repro.errors import ConfigError
from adagc_repro.registry import Registry

DATA_SOURCES = Registry("data source", "data", selector="source")
TEXT_SUFFIXES = (".txt", ".md", ".jsonl", ".json", ".parquet")


@DATA_SOURCES.register("stdlib_docs")
def stdlib_docs(cache: Path, *, name: str, min_docstring_chars: int = 80) -> list[str]:
    from adagc_repro.data.stdlib_corpus import stdlib_documents

    version = "{}.{}.{}".format(*sys.version_info[:3])
    path = Path(cache) / "corpus" / f"stdlib-{version}-{min_docstring_chars}.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    documents = stdlib_documents(min_docstring_chars)
    write_json(path, documents)
    return documents


@DATA_SOURCES.register("text_files")
def text_files(cache: Path, *, name: str, paths: list[str], text_key: str = "text") -> list[str]:
    files = [Path(p).expanduser() for p in paths]
    for path in files:
        if not path.is_file():
            raise ConfigError("data.paths", f"no such file '{path}'")
        if path.suffix not in TEXT_SUFFIXES:
            raise ConfigError("data.paths", f"unsupported file type '{path.suffix}' for '{path}'", TEXT_SUFFIXES)
    documents = []
    for path in files:
        documents += _read_documents(path, text_key)
    if not documents:
        raise ConfigError("data.paths", "the files hold no text")
    return documents


def _read_documents(path: Path, text_key: str) -> list[str]:
    if path.suffix in (".txt", ".md"):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError("data.paths", f"'{path}' is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
        blocks = re.split(r"\n\s*\n", text)  # blank lines separate documents
        return [block.strip() for block in blocks if block.strip()]
    import datasets

    kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}[path.suffix]
    table = datasets.load_dataset(kind, data_files=str(path), split="train")
    if text_key not in table.column_names:
        raise ConfigError("data.text_key", f"'{text_key}' is not a column of '{path}'", table.column_names)
    return [text for text in table[text_key] if text and text.strip()]


@DATA_SOURCES.register("hf")
def hf(
    cache: Path,
    *,
    name: str,
    config: str | None = None,
    split: str = "train",
    streaming: bool = False,
    text_key: str = "text",
    max_documents: int = 200_000,
) -> list[str]:
    import datasets

    with offline_guard("data.name", name):
        table = datasets.load_dataset(name, config, split=split, streaming=streaming)
        rows = table.take(max_documents) if streaming else table.select(range(min(max_documents, len(table))))
        documents = [row[text_key] for row in rows if row.get(text_key)]
    if not documents:
        raise ConfigError("data.text_key", f"no '{text_key}' text in {name}/{config}:{split}")
    return documents
