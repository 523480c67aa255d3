"""Sources, shards (prepare → read back, resume after a kill, parallel = serial), loader, epochs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from adagc_repro.data import (
    BlockSet,
    build_token_data,
    check_epochs,
    document_positions,
    epoch_summary,
    rank_micro_batches,
    split_documents,
)
from adagc_repro.data import shards as shards_lib
from adagc_repro.data.epochs import DataRepeatWarning
from adagc_repro.data.loader import StepLoader, sample_blocks
from adagc_repro.data.sources import read_documents, stdlib_docs, text_files
from adagc_repro.data.tokenizer import load_tokenizer
from adagc_repro.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the of clip gradient norm adaptive tensor layer step loss spike model token batch".split()


def _corpus(folder: Path, documents: int = 300) -> Path:
    """A .txt of varied paragraphs (blank-line separated), some repeated words, deterministic."""
    rng = np.random.default_rng(0)
    paragraphs = [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 60)))) + f" #{i}." for i in range(documents)]
    path = folder / "corpus.txt"
    path.write_text("\n\n".join(paragraphs) + "\n")
    return path


def _cfg(path: Path, **kw):
    return {"source": "text_files", "name": "t", "paths": [str(path)], "text_key": "text", "tokenizer": None,
            "vocab_size": 300, "val_fraction": 0.1, **kw}


def _shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".bin", ".idx")}


def test_stdlib_corpus_is_real_english_and_deterministic():
    first, second = stdlib_docs(name="stdlib_docs"), stdlib_docs(name="stdlib_docs")
    assert first.fingerprint == second.fingerprint
    documents = list(first.documents())
    assert documents == list(second.documents())
    text = "\n".join(documents)
    assert len(text) > 1_000_000 and " the " in text and "assert" in text


def test_split_is_stable_and_disjoint():
    docs = [f"document number {i}" for i in range(2000)]
    train, val = split_documents(docs, 0.1)
    assert set(train).isdisjoint(val) and len(train) + len(val) == 2000
    assert 120 < len(val) < 280
    assert split_documents(list(reversed(docs)), 0.1)[1] == list(reversed(val))


def test_shards_read_back_equal_direct_tokenization(tmp_path, monkeypatch):
    monkeypatch.setattr(shards_lib, "SHARD_CHARS", 3000)  # several shards, blocks cross their boundaries
    path = _corpus(tmp_path)
    folder = shards_lib.prepare(_cfg(path), tmp_path / "cache", workers=1)
    manifest = shards_lib.load_manifest(folder)
    assert len(manifest["shards"]) > 3 and manifest["dtype"] == "uint16"
    tokenizer = load_tokenizer(manifest["tokenizer"]["spec"])
    documents = list(read_documents(path, "text"))
    train_docs, val_docs = split_documents(documents, 0.1)
    assert manifest["documents"] == {"train": len(train_docs), "val": len(val_docs)} and val_docs
    eos = tokenizer.eos_token_id
    for split, docs in (("train", train_docs), ("val", val_docs)):
        expected = [t for doc in docs for t in tokenizer(doc, add_special_tokens=False)["input_ids"] + [eos]]
        stream = shards_lib.TokenSplit(folder, split)
        assert stream.read(0, len(stream)).tolist() == expected
        ends = np.concatenate([np.fromfile(folder / f"{split}-{s['index']:05d}.idx", dtype=np.int64)
                               + sum(x["tokens"][split] for x in manifest["shards"][: s["index"]])
                               for s in manifest["shards"]])
        assert (np.flatnonzero(np.array(expected) == eos) + 1).tolist() == ends.tolist()
    blocks = BlockSet(shards_lib.TokenSplit(folder, "train"), seq_len=16)
    assert len(blocks) == manifest["tokens"]["train"] // 16
    train_expected = shards_lib.TokenSplit(folder, "train").read(0, len(blocks) * 16)
    assert blocks.batch([len(blocks) - 1, 3])["input_ids"].tolist() == [
        train_expected[-16:].tolist(), train_expected[48:64].tolist()]


@pytest.mark.slow  # starts two tokenizer processes (~25 s on 2 cores)
def test_parallel_prepare_writes_the_same_bytes_as_serial(tmp_path, monkeypatch):
    monkeypatch.setattr(shards_lib, "SHARD_CHARS", 3000)
    path = _corpus(tmp_path)
    serial = shards_lib.prepare(_cfg(path), tmp_path / "a", workers=1)
    parallel = shards_lib.prepare(_cfg(path), tmp_path / "b", workers=2)
    assert _shard_bytes(serial) == _shard_bytes(parallel)
    assert shards_lib.load_manifest(serial)["content_hash"] == shards_lib.load_manifest(parallel)["content_hash"]


_KILLED_PREPARE = """
import os, signal, sys
from pathlib import Path
from adagc_repro.data import shards
shards.SHARD_CHARS = 3000
original = shards.write_shard
def write_then_die(job, index, train_docs, val_docs):
    if index == 3:  # half a file on disk, then a hard kill in the middle of the prepare
        Path(job["folder"], ".train-00003.bin.tmp").write_bytes(b"partial")
        os.kill(os.getpid(), signal.SIGKILL)
    return original(job, index, train_docs, val_docs)
shards.write_shard = write_then_die
shards.prepare({cfg}, Path(sys.argv[1]), workers=1)
"""


def test_prepare_killed_midway_resumes_to_byte_identical_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(shards_lib, "SHARD_CHARS", 3000)
    path = _corpus(tmp_path)
    cfg = _cfg(path)
    script = _KILLED_PREPARE.replace("{cfg}", repr(cfg))
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "killed")], env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == -9
    folder = shards_lib.shard_folder(tmp_path / "killed", shards_lib.plan(cfg, tmp_path / "killed"))
    assert (folder / "shard-00002.json").exists() and not (folder / "manifest.json").exists()
    resumed = shards_lib.prepare(cfg, tmp_path / "killed", workers=1)
    fresh = shards_lib.prepare(cfg, tmp_path / "fresh", workers=1)
    assert _shard_bytes(resumed) == _shard_bytes(fresh)
    assert not [p for p in resumed.iterdir() if p.name.startswith(".")]


def test_a_moved_cache_keeps_its_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(shards_lib, "SHARD_CHARS", 3000)
    cfg = _cfg(_corpus(tmp_path))
    folder = shards_lib.prepare(cfg, tmp_path / "cache", workers=1)  # trains its tokenizer into the cache
    (tmp_path / "cache").rename(tmp_path / "moved")
    monkeypatch.setattr(shards_lib, "_write_shards", lambda *args: pytest.fail("prepared again"))
    moved = shards_lib.prepare(cfg, tmp_path / "moved", workers=1)
    assert moved == tmp_path / "moved" / folder.relative_to(tmp_path / "cache")
    data = build_token_data(cfg, seq_len=16, cache=tmp_path / "moved")  # the tokenizer, from where it is now
    assert data.manifest["tokenizer"]["digest"] == shards_lib.tokenizer_digest(data.tokenizer)


def test_a_second_prepare_of_the_same_data_waits_and_leaves_the_first_ones_files_alone(tmp_path, monkeypatch):
    import fcntl
    import threading

    monkeypatch.setattr(shards_lib, "SHARD_CHARS", 3000)
    cfg = _cfg(_corpus(tmp_path))
    folder = shards_lib.shard_folder(tmp_path / "c", shards_lib.plan(cfg, tmp_path / "c"))
    folder.mkdir(parents=True)
    in_flight = folder / ".train-00001.bin.4242.tmp"  # another process's write, not yet renamed
    in_flight.write_bytes(b"partial")
    with open(folder / shards_lib.PREPARE_LOCK, "w") as other:  # that process holds the folder
        fcntl.flock(other, fcntl.LOCK_EX)
        second = threading.Thread(target=shards_lib.prepare, args=(cfg, tmp_path / "c"), kwargs={"workers": 1})
        second.start()
        second.join(timeout=3)
        assert second.is_alive() and in_flight.exists()  # waiting: nothing removed, nothing written
        assert not (folder / "manifest.json").exists() and not list(folder.glob("shard-*.json"))
        fcntl.flock(other, fcntl.LOCK_UN)
    second.join(timeout=60)
    assert not second.is_alive() and (folder / "manifest.json").exists()
    assert not in_flight.exists()  # its writer gone, a leftover: cleaned up by the prepare that finished
    assert _shard_bytes(folder) == _shard_bytes(shards_lib.prepare(cfg, tmp_path / "fresh", workers=1))


def test_max_tokens_stops_at_the_first_shard_past_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(shards_lib, "SHARD_CHARS", 3000)
    path = _corpus(tmp_path)
    full = shards_lib.load_manifest(shards_lib.prepare(_cfg(path), tmp_path / "c", workers=1))
    cap = full["shards"][0]["tokens"]["train"] + 1
    capped = shards_lib.load_manifest(shards_lib.prepare(_cfg(path, max_tokens=cap), tmp_path / "c", workers=1))
    assert [s["index"] for s in capped["shards"]] == [0, 1]
    assert capped["shards"] == full["shards"][:2]


def test_large_vocab_uses_uint32():
    assert shards_lib.token_dtype(65_536) == np.uint16 and shards_lib.token_dtype(65_537) == np.uint32


def test_token_data_trains_a_cached_tokenizer_and_blocks(tmp_path):
    path = _corpus(tmp_path)
    data = build_token_data(_cfg(path), seq_len=32, cache=tmp_path / "cache")
    assert data.vocab_size == 300 and data.train.batch([0])["input_ids"].shape == (1, 32)
    started = time.perf_counter()
    again = build_token_data(_cfg(path), seq_len=32, cache=tmp_path / "cache")
    assert time.perf_counter() - started < 5
    assert (again.train.blocks(3) == data.train.blocks(3)).all() and data.facts == again.facts


def test_text_files_txt_jsonl_folders_and_globs(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("First paragraph here.\n\nSecond one.\n")
    (tmp_path / "d" / "b.jsonl").write_text("\n".join(json.dumps({"body": f"row {i}"}) for i in range(3)))
    docs = list(text_files(name="l", paths=[str(tmp_path / "d" / "a.txt")]).documents())
    assert docs == ["First paragraph here.", "Second one."]
    assert list(text_files(name="l", paths=[str(tmp_path / "d" / "*.jsonl")], text_key="body").documents()) == [
        "row 0", "row 1", "row 2"]
    assert len(text_files(name="l", paths=[str(tmp_path / "d")], text_key="body").describe["files"]) == 2
    with pytest.raises(ConfigError, match="data.text_key"):
        list(text_files(name="l", paths=[str(tmp_path / "d" / "b.jsonl")]).documents())


def test_parquet_rows_are_documents(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"text": ["alpha beta", "", "gamma"]}), tmp_path / "x.parquet")
    assert list(text_files(name="p", paths=[str(tmp_path / "x.parquet")]).documents()) == ["alpha beta", "gamma"]


def test_missing_local_file_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^data.paths: no such file"):
        text_files(name="local", paths=[str(tmp_path / "nope.txt")])


def test_hub_dataset_offline_fails_fast_with_one_line(tmp_path):
    started = time.perf_counter()
    cfg = {"source": "hf", "name": "allenai/c4", "config": "en", "split": "train", "streaming": True,
           "text_key": "text", "max_tokens": 1000, "tokenizer": None, "vocab_size": 300, "val_fraction": 0.01}
    with pytest.raises(ConfigError, match=r"^data.name: cannot load 'allenai/c4'") as error:
        build_token_data(cfg, seq_len=64, cache=tmp_path)
    assert "\n" not in str(error.value) and time.perf_counter() - started < 30


_SITE_DOCS = """
import json, sys
from adagc_repro.data.site_docs import SiteDocs
corpus = SiteDocs()
files = [str(path) for path in corpus.files]
corpus.files = corpus.files[:150]
json.dump({"fingerprint": corpus.fingerprint, "files": files, "documents": list(corpus.documents())}, sys.stdout)
"""


def test_site_docs_ignores_vendored_distributions_that_an_import_puts_on_sys_path(tmp_path, monkeypatch):
    from adagc_repro.data import site_docs

    before = site_docs._candidate_files()
    vendored = tmp_path / "somepackage" / "_vendor"  # as setuptools/_vendor, added by importing setuptools
    (vendored / "vendoredthing-1.0.dist-info").mkdir(parents=True)
    (vendored / "vendoredthing-1.0.dist-info" / "METADATA").write_text("Name: vendoredthing\nVersion: 1.0\n")
    (vendored / "vendoredthing-1.0.dist-info" / "RECORD").write_text("vendoredthing/__init__.py,,\n")
    (vendored / "vendoredthing").mkdir()
    (vendored / "vendoredthing" / "__init__.py").write_text('"""A vendored module."""\n')
    monkeypatch.syspath_prepend(str(vendored))
    assert site_docs._candidate_files() == before


def test_site_docs_is_deterministic_on_one_machine():
    from adagc_repro.data.site_docs import SiteDocs

    # the other one in another process: no cache of this one can help it, and the two listings (3.5 s
    # each, one core) run side by side
    other = subprocess.Popen([sys.executable, "-c", _SITE_DOCS], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    first = SiteDocs()
    files = [str(path) for path in first.files]
    first.files = first.files[:150]  # the documents of a slice: all of them take minutes
    documents = list(first.documents())
    second = json.loads(other.communicate(timeout=120)[0])
    assert other.returncode == 0
    assert first.fingerprint == second["fingerprint"] and files == second["files"] and len(first.packages) > 10
    assert documents == second["documents"] and len(documents) > 50
    assert len(set(documents)) == len(documents)  # deduplicated


def test_rank_slices_tile_the_global_batch_and_match_the_sample_order():
    kw = {"num_blocks": 37, "micro_batch": 6, "accum": 2}
    for step in (0, 5, 13):
        global_batch = rank_micro_batches(7, step, 0, 1, micro_batch=12, accum=1, num_blocks=37)[0]
        one_rank = [b for micro in rank_micro_batches(7, step, 0, 1, **kw) for b in micro]
        ranks = [rank_micro_batches(7, step, rank, 2, **kw) for rank in range(2)]
        # global micro-batch m is the same samples on one or two processes: rank 0's half, then rank 1's
        per_micro = [b for m in range(2) for rank in range(2) for b in ranks[rank][m]]
        assert per_micro == one_rank == global_batch == sample_blocks(step * 12, 12, seed=7, num_blocks=37)
    epoch = sample_blocks(0, 37, seed=7, num_blocks=37)
    assert sorted(epoch) == list(range(37)) and sample_blocks(37, 37, seed=7, num_blocks=37) != epoch
    assert sample_blocks(0, 37, seed=8, num_blocks=37) != epoch


class _Blocks:
    def __len__(self):
        return 10

    def batch(self, indices):
        import torch

        return {"input_ids": torch.tensor(indices)[:, None]}


def test_loader_resumes_at_any_step_with_the_same_batches():
    full = StepLoader(_Blocks(), seed=1, rank=0, world_size=1, micro_batch=2, accum=2, start_step=0, device="cpu")
    steps = [[b["input_ids"].flatten().tolist() for b in next(full)] for _ in range(8)]
    full.close()
    resumed = StepLoader(_Blocks(), seed=1, rank=0, world_size=1, micro_batch=2, accum=2, start_step=5, device="cpu")
    assert [b["input_ids"].flatten().tolist() for b in next(resumed)] == steps[5]
    resumed.close()
    assert steps[0] == [b for b in rank_micro_batches(1, 0, 0, 1, num_blocks=10, micro_batch=2, accum=2)]


def test_document_positions_restart_after_eos():
    rows = np.array([[5, 0, 7, 8, 0, 0, 9], [1, 2, 3, 4, 0, 6, 6]])
    assert document_positions(rows, eos=0).tolist() == [[0, 1, 0, 1, 2, 0, 0], [0, 1, 2, 3, 4, 0, 1]]


def test_epoch_warning_names_the_numbers_and_max_epochs_makes_it_an_error():
    with pytest.warns(DataRepeatWarning, match=r"30 steps × 64 tokens per step = 1,920 tokens.*holds 640.*3\.00 passes"):
        check_epochs(30, 4, 40, 16, None)
    with pytest.raises(ConfigError, match=r"^data.max_epochs: .*3\.00 passes"):
        check_epochs(30, 4, 40, 16, 2)
    check_epochs(10, 4, 40, 16, 1)  # exactly one pass: silent
    assert epoch_summary(30, 4, 40, 16) == {"data_train_tokens": 640, "data_tokens_seen": 1920,
                                            "data_unique_tokens": 640, "data_epochs": 3.0}


def test_wikitext_file_is_usable_as_local_text(shared_data: Path):
    docs = list(text_files(name="wikitext", paths=[str(shared_data / "wikitext-2" / "valid.txt")]).documents())
    assert len(docs) > 100


def test_a_run_that_repeats_its_data_warns_logs_epochs_and_max_epochs_fails_it(tmp_path, tiny):
    from typer.testing import CliRunner

    from adagc_repro.cli import app

    corpus = _corpus(tmp_path, documents=40)
    data = ["data=text_files", f"data.paths=[{corpus}]", "data.vocab_size=300", "data.val_fraction=0.2"]
    overrides = tiny(*data, "train.steps=40", "train.seq_len=32", "train.batch_size=4")
    with pytest.warns(DataRepeatWarning, match=r"40 steps × 128 tokens per step = 5,120 tokens"):
        result = CliRunner().invoke(app, ["run", *overrides])
    assert result.exit_code == 0, result.output
    run_dir = next((tmp_path / "results" / "runs").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [line["data/epoch"] for line in lines if "data/epoch" in line]
    assert summary["data_epochs"] > 1 and epochs[-1] == pytest.approx(summary["data_epochs"])
    assert epochs[0] == pytest.approx(4 / (summary["data_train_tokens"] // 32))  # 4 blocks per step
    assert summary["data_unique_tokens"] == summary["data_train_tokens"] < summary["data_tokens_seen"] == 5120
    failed = CliRunner().invoke(app, ["run", *overrides, "data.max_epochs=1"])
    assert failed.exit_code == 1
    errors = list((tmp_path / "results" / "runs").glob("*/error.txt"))
    assert "data.max_epochs:" in errors[0].read_text()
