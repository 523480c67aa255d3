"""Pre-tokenized shards: a source is tokenized once into flat memory-mapped arrays of token ids.

    <cache>/shards/<key>/
      train-00000.bin  val-00000.bin     token ids (uint16 when the vocabulary fits, else uint32),
                                         every document followed by EOS
      train-00000.idx  val-00000.idx     int64 end offset of each document inside the .bin (the index)
      shard-00000.json                   counts and SHA-256 of shard 0, written last: the shard is complete
      manifest.json                      source, tokenizer, split, dtype, shard list, totals, content hash
      prepare.lock                       held by the one process that writes the folder (others wait)

`data.max_tokens` ends preparing at the first shard whose cumulative training tokens reach it.
Shard k holds the documents of the k-th run of about `SHARD_CHARS` characters of the source, so its
bytes depend only on those documents: shards are written in parallel (one process per shard), memory
is bounded by a few shards, and a prepare that was killed resumes by skipping the completed shards
and gives byte-identical files. Validation documents are chosen by a stable hash of their text.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from adagc_repro.atomic import write_json
from adagc_repro.data.progress import PrepareProgress
from adagc_repro.data.sources import DATA_SOURCES, DocumentSource
from adagc_repro.data.tokenizer import load_tokenizer, tokenizer_digest, tokenizer_spec
from adagc_repro.errors import ConfigError
from adagc_repro.feedback import status

SHARD_RECIPE = "shards-v1"
SHARD_CHARS = 4_000_000  # characters of text per shard: ~1M tokens, a few seconds of work per process
SPLITS = ("train", "val")
PREPARE_LOCK = "prepare.lock"  # flock'ed by the process writing the folder; not a dotfile, so never cleaned up
# Keys of the data node that are not the source's own arguments.
COMMON_KEYS = ("source", "tokenizer", "vocab_size", "val_fraction", "max_tokens", "max_epochs", "document_mask")


def is_validation(document: str, val_fraction: float) -> bool:
    """Held out by a stable hash of the text: independent of order, seed and machine."""
    return int(hashlib.sha1(document.encode()).hexdigest()[:8], 16) % 10_000 < int(val_fraction * 10_000)


def split_documents(documents, val_fraction: float) -> tuple[list[str], list[str]]:
    train, val = [], []
    for document in documents:
        (val if is_validation(document, val_fraction) else train).append(document)
    return train, val


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


@dataclass
class Plan:
    """Everything that determines the shards' bytes."""

    source: DocumentSource
    tokenizer: str  # folder or hub id
    val_fraction: float
    max_tokens: int | None
    tokenizer_id: str = ""  # the tokenizer in the key: a trained one by its path inside the cache

    @property
    def key(self) -> str:
        tokenizer = self.tokenizer_id or self.tokenizer
        parts = [SHARD_RECIPE, self.source.fingerprint, tokenizer, self.val_fraction, self.max_tokens, SHARD_CHARS]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def plan(data_cfg: Mapping[str, Any], cache: Path) -> Plan:
    data = dict(data_cfg)
    source = DATA_SOURCES.build(data["source"], **{k: v for k, v in data.items() if k not in COMMON_KEYS})
    val_fraction = float(data.get("val_fraction", 0.05))

    def train_documents():
        return (doc for doc in source.documents() if not is_validation(doc, val_fraction))

    spec = tokenizer_spec(data.get("tokenizer"), f"{source.fingerprint}|{val_fraction}", train_documents,
                          int(data.get("vocab_size", 8192)), cache)
    max_tokens = data.get("max_tokens")
    return Plan(source, spec, val_fraction, None if max_tokens is None else int(max_tokens), _cache_relative(spec, cache))


def _cache_relative(spec: str, cache: Path) -> str:
    """A tokenizer trained into the cache, by its path inside it (its folder name holds the recipe, the
    corpus and the vocabulary size): a cache that is moved or mounted elsewhere keeps its shards."""
    try:
        return Path(spec).resolve().relative_to(Path(cache).resolve()).as_posix()
    except ValueError:  # a hub id or a folder of the user's
        return spec


def shard_folder(cache: Path, spec: Plan) -> Path:
    return Path(cache) / "shards" / spec.key


def prepare(data_cfg: Mapping[str, Any], cache: Path, *, workers: int | None = None, progress: bool = False) -> Path:
    """Tokenize the configured source into shards (skipping completed ones); returns the folder."""
    spec = plan(data_cfg, cache)
    folder = shard_folder(cache, spec)
    if (folder / "manifest.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with _preparing(folder):  # a second process waits here, then finds the manifest
        if not (folder / "manifest.json").exists():
            _prepare_locked(spec, folder, workers, progress)
    return folder


@contextlib.contextmanager
def _preparing(folder: Path):
    """Exclusive ownership of a shard folder while it is written. Without it, the first of two processes
    preparing the same data would remove the other's half-written files as leftovers of a killed write."""
    with open(folder / PREPARE_LOCK, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with status(f"waiting for another process that prepares {folder}"):
                fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prepare_locked(spec: Plan, folder: Path, workers: int | None, progress: bool) -> None:
    tokenizer = load_tokenizer(spec.tokenizer)
    dtype = token_dtype(len(tokenizer))
    job = {"folder": str(folder), "tokenizer": spec.tokenizer, "dtype": dtype.str, "eos": tokenizer.eos_token_id}
    quiet = contextlib.nullcontext() if progress else status(f"tokenizing the data into shards in {folder}")
    with PrepareProgress(spec.source.expected_bytes, enabled=progress) as bar, quiet:
        shards = _write_shards(spec, job, workers or default_workers(), bar)
    manifest = _manifest(spec, tokenizer, dtype, shards)
    _remove_unlisted(folder, len(shards))
    write_json(folder / "manifest.json", manifest)


def default_workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 16))


def _write_shards(spec: Plan, job: dict, workers: int, bar: PrepareProgress) -> list[dict]:
    """Completed shard records in order; a `max_tokens` cap ends at the first shard that reaches it."""
    done, train_tokens = [], 0
    with contextlib.closing(_shard_records(spec, job, workers)) as records:
        for record in records:
            done.append(record)
            bar.advance(record)
            train_tokens += record["tokens"]["train"]
            if spec.max_tokens and train_tokens >= spec.max_tokens:
                break
    return done


def _shard_records(spec: Plan, job: dict, workers: int) -> Iterator[dict]:
    """Shard records in order: completed ones read back, the others written in a process pool (started
    once a second shard exists, so a small corpus never starts one) with at most `workers + 1` in flight."""
    pending: deque[Future | dict] = deque()
    pool = None
    try:
        for index, (train_docs, val_docs) in enumerate(_document_runs(spec)):
            record = _read_record(job["folder"], index)
            if record is None and workers > 1 and index > 0:
                pool = pool or ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
                record = pool.submit(write_shard, job, index, train_docs, val_docs)
            elif record is None:
                record = write_shard(job, index, train_docs, val_docs)
            pending.append(record)
            while pending and (len(pending) > workers or not isinstance(pending[0], Future)):
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _result(item: Future | dict) -> dict:
    return item.result() if isinstance(item, Future) else item


def _document_runs(spec: Plan) -> Iterator[tuple[list[str], list[str]]]:
    """The source cut into consecutive runs of about SHARD_CHARS characters, each split train/val."""
    train, val, chars = [], [], 0
    for document in spec.source.documents():
        (val if is_validation(document, spec.val_fraction) else train).append(document)
        chars += len(document)
        if chars >= SHARD_CHARS:
            yield train, val
            train, val, chars = [], [], 0
    if train or val:
        yield train, val


_TOKENIZERS: dict[str, Any] = {}


def write_shard(job: dict, index: int, train_docs: list[str], val_docs: list[str]) -> dict:
    """Tokenize one run of documents into its .bin/.idx files, then write its record (the commit)."""
    if job["tokenizer"] not in _TOKENIZERS:
        _TOKENIZERS[job["tokenizer"]] = load_tokenizer(job["tokenizer"])
    tokenizer = _TOKENIZERS[job["tokenizer"]]
    folder = Path(job["folder"])
    record: dict[str, Any] = {"index": index, "documents": {}, "tokens": {}, "text_bytes": 0, "sha256": {}}
    for split, docs in zip(SPLITS, (train_docs, val_docs), strict=True):
        ids, ends = tokenize_documents(tokenizer, docs, job["eos"], np.dtype(job["dtype"]))
        record["sha256"][split] = _write_array(folder / f"{split}-{index:05d}.bin", ids)
        _write_array(folder / f"{split}-{index:05d}.idx", ends)
        record["documents"][split], record["tokens"][split] = len(docs), int(ids.size)
        record["text_bytes"] += sum(len(doc.encode()) for doc in docs)
    write_json(folder / f"shard-{index:05d}.json", record)
    return record


def tokenize_documents(tokenizer, documents: list[str], eos: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of the documents, each followed by EOS, and the end offset of each document."""
    rows = tokenizer(documents, add_special_tokens=False)["input_ids"] if documents else []
    lengths = np.fromiter((len(row) + 1 for row in rows), dtype=np.int64, count=len(rows))
    ids = np.empty(int(lengths.sum()), dtype=dtype)
    ends = np.cumsum(lengths)
    for row, end in zip(rows, ends, strict=True):
        ids[end - len(row) - 1 : end - 1] = row
        ids[end - 1] = eos
    return ids, ends


def _write_array(path: Path, array: np.ndarray) -> str:
    """Write raw bytes to a temporary file, then rename: a killed prepare never leaves half a shard."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = np.ascontiguousarray(array).tobytes()
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def _read_record(folder: str, index: int) -> dict | None:
    path = Path(folder) / f"shard-{index:05d}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _remove_unlisted(folder: Path, count: int) -> None:
    """Shards written past a max_tokens cap (they were in flight) and leftovers of killed writes."""
    for path in folder.iterdir():
        stem = path.name.split(".")[0]
        index = stem.rsplit("-", 1)[-1]
        if path.name.startswith(".") or (index.isdigit() and int(index) >= count):
            path.unlink()


def _manifest(spec: Plan, tokenizer, dtype: np.dtype, shards: list[dict]) -> dict:
    if not shards:
        raise ConfigError("data.source", f"{spec.source.describe} holds no documents")
    content = hashlib.sha256()
    for shard in shards:
        content.update(f"{shard['sha256']['train']}{shard['sha256']['val']}".encode())
    totals = {key: {split: sum(s[key][split] for s in shards) for split in SPLITS} for key in ("documents", "tokens")}
    return {
        "recipe": SHARD_RECIPE,
        "source": spec.source.describe,
        "fingerprint": spec.source.fingerprint,
        "tokenizer": {"spec": spec.tokenizer, "in_cache": spec.tokenizer_id if spec.tokenizer_id != spec.tokenizer else None,
                      "digest": tokenizer_digest(tokenizer), "vocab_size": len(tokenizer),
                      "eos_token_id": tokenizer.eos_token_id},
        "dtype": dtype.name,
        "split": {"method": "sha1(document)[:8] % 10000 < val_fraction * 10000", "val_fraction": spec.val_fraction},
        "max_tokens": spec.max_tokens,
        "documents": totals["documents"],
        "tokens": totals["tokens"],
        "text_bytes": sum(s["text_bytes"] for s in shards),
        "content_hash": content.hexdigest(),
        "shards": shards,
    }


def load_manifest(folder: Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())


class TokenSplit:
    """One split of the shards as a single flat token stream, read through memory maps."""

    def __init__(self, folder: Path, split: str):
        manifest = load_manifest(folder)
        self.dtype = np.dtype(manifest["dtype"])
        self.eos = manifest["tokenizer"]["eos_token_id"]
        counts = [shard["tokens"][split] for shard in manifest["shards"]]
        self._paths = [Path(folder) / f"{split}-{shard['index']:05d}.bin" for shard in manifest["shards"]]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self._starts[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int64, across shard boundaries."""
        out = np.empty(length, dtype=np.int64)
        filled = 0
        shard = int(np.searchsorted(self._starts, start, side="right")) - 1
        while filled < length:
            offset = start + filled - int(self._starts[shard])
            piece = self._map(shard)[offset : offset + length - filled]
            out[filled : filled + piece.size] = piece
            filled += piece.size
            shard += 1
        return out

    def _map(self, shard: int) -> np.ndarray:
        if shard not in self._maps:
            size = int(self._starts[shard + 1] - self._starts[shard])
            self._maps[shard] = (np.memmap(self._paths[shard], dtype=self.dtype, mode="r", shape=(size,))
                                 if size else np.empty(0, dtype=self.dtype))
        return self._maps[shard]
