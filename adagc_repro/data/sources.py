"""Where documents come from: the embedded stdlib corpus, installed packages' docs, local files, the hub.

A source is a `DocumentSource`: a fingerprint that changes whenever its documents could (the shard
cache is keyed by it), a description for the manifest, and `documents()`, a fresh iterator over the
documents in a fixed order, read lazily so that no corpus is ever held in memory as a whole.
"""

from __future__ import annotations

import glob
import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adagc_repro.data.hub import offline_guard
from adagc_repro.errors import ConfigError
from adagc_repro.registry import Registry

DATA_SOURCES = Registry("data source", "data", selector="source")
TEXT_SUFFIXES = (".txt", ".md", ".jsonl", ".json", ".parquet")


@dataclass
class DocumentSource:
    fingerprint: str  # changes whenever the documents could
    describe: dict[str, Any]  # what the manifest records about the source
    documents: Callable[[], Iterator[str]]  # a fresh iterator, same documents in the same order every call
    expected_bytes: int | None = None  # UTF-8 bytes of text, roughly, for the progress bar's ETA


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@DATA_SOURCES.register("stdlib_docs")
def stdlib_docs(*, name: str, min_docstring_chars: int = 80) -> DocumentSource:
    from adagc_repro.data.stdlib_corpus import stdlib_documents

    version = "{}.{}.{}".format(*sys.version_info[:3])
    return DocumentSource(
        fingerprint=_digest("stdlib_docs-v1", version, min_docstring_chars),
        describe={"source": "stdlib_docs", "python": version, "min_docstring_chars": min_docstring_chars},
        documents=lambda: iter(stdlib_documents(min_docstring_chars)),
        expected_bytes=2_300_000,
    )


@DATA_SOURCES.register("site_docs")
def site_docs(*, name: str, min_docstring_chars: int = 80) -> DocumentSource:
    from adagc_repro.data.site_docs import SiteDocs

    corpus = SiteDocs(min_docstring_chars)
    return DocumentSource(
        fingerprint=corpus.fingerprint,
        describe={"source": "site_docs", "fingerprint": corpus.fingerprint, "packages": len(corpus.packages),
                  "min_docstring_chars": min_docstring_chars},
        documents=corpus.documents,
        expected_bytes=corpus.candidate_bytes // 4,  # docstrings are about a quarter of the files' bytes
    )


@DATA_SOURCES.register("text_files")
def text_files(*, name: str, paths: list[str], text_key: str = "text") -> DocumentSource:
    files = expand_paths(paths)
    hasher = hashlib.sha256(text_key.encode())
    for path in files:
        hasher.update(str(path).encode())
        hasher.update(_file_digest(path))
    return DocumentSource(
        fingerprint=hasher.hexdigest()[:16],
        describe={"source": "text_files", "files": [str(p) for p in files], "text_key": text_key},
        documents=lambda: (doc for path in files for doc in read_documents(path, text_key)),
        expected_bytes=sum(p.stat().st_size for p in files),
    )


def expand_paths(paths: list[str]) -> list[Path]:
    """Files, folders (every text file below, sorted) and glob patterns, in the order given."""
    files: list[Path] = []
    for spec in paths:
        spec = str(Path(spec).expanduser())
        matches = sorted(glob.glob(spec, recursive=True)) if glob.has_magic(spec) else [spec]
        if not matches:
            raise ConfigError("data.paths", f"no file matches '{spec}'")
        for match in map(Path, matches):
            if match.is_dir():
                files += sorted(p for p in match.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
            elif not match.is_file():
                raise ConfigError("data.paths", f"no such file '{match}'")
            elif match.suffix not in TEXT_SUFFIXES:
                raise ConfigError("data.paths", f"unsupported file type '{match.suffix}' for '{match}'", TEXT_SUFFIXES)
            else:
                files.append(match)
    if not files:
        raise ConfigError("data.paths", f"no text files under {list(paths)}", TEXT_SUFFIXES)
    return files


def _file_digest(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").digest()


def read_documents(path: Path, text_key: str) -> Iterator[str]:
    """A file's documents, streamed: blank-line-separated blocks of .txt/.md, rows of .jsonl/.parquet."""
    try:
        if path.suffix in (".txt", ".md"):
            yield from _paragraph_blocks(path)
        elif path.suffix in (".jsonl", ".json"):
            yield from _jsonl_texts(path, text_key)
        else:
            yield from _parquet_texts(path, text_key)
    except UnicodeDecodeError as exc:
        raise ConfigError("data.paths", f"'{path}' is not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def _paragraph_blocks(path: Path) -> Iterator[str]:
    block: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                block.append(line)
            elif block:
                yield "".join(block).strip()
                block = []
    if block:
        yield "".join(block).strip()


def _jsonl_texts(path: Path, text_key: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if text_key not in row:
                raise ConfigError("data.text_key", f"'{text_key}' is not a field of {path}:{number}", sorted(row))
            if row[text_key] and row[text_key].strip():
                yield row[text_key]


def _parquet_texts(path: Path, text_key: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    if text_key not in table.schema_arrow.names:
        raise ConfigError("data.text_key", f"'{text_key}' is not a column of '{path}'", table.schema_arrow.names)
    for batch in table.iter_batches(columns=[text_key], batch_size=1024):
        yield from (text for text in batch.column(0).to_pylist() if text and text.strip())


@DATA_SOURCES.register("hf")
def hf(
    *,
    name: str,
    config: str | None = None,
    split: str = "train",
    streaming: bool = True,
    text_key: str = "text",
) -> DocumentSource:
    """A hub data set read in order (`data.max_tokens` bounds what is prepared)."""

    def documents() -> Iterator[str]:
        import datasets

        with offline_guard("data.name", name):
            rows = iter(datasets.load_dataset(name, config, split=split, streaming=streaming))
            first = next(rows, None)
        if first is None or text_key not in first:
            raise ConfigError("data.text_key", f"no '{text_key}' text in {name}/{config}:{split}")
        for row in _chain_first(first, rows):
            if row[text_key]:
                yield row[text_key]

    return DocumentSource(
        fingerprint=_digest("hf-v1", name, config, split, text_key),
        describe={"source": "hf", "name": name, "config": config, "split": split, "text_key": text_key},
        documents=documents,
    )


def _chain_first(first, rest):
    yield first
    yield from rest
