"""The embedded corpus, tokenizer cache, local files, hub errors and the block sampler."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from adagc_repro.data import BlockSampler, build_token_data, split_documents
from adagc_repro.data.sources import stdlib_docs, text_files
from adagc_repro.errors import ConfigError


def _cfg(**kw):
    base = {"source": "stdlib_docs", "name": "stdlib_docs", "tokenizer": None, "vocab_size": 1024, "val_fraction": 0.05}
    return {**base, **kw}


def test_stdlib_corpus_is_real_english_and_deterministic(tmp_path):
    first = stdlib_docs(tmp_path / "a", name="stdlib_docs")
    second = stdlib_docs(tmp_path / "b", name="stdlib_docs")
    assert first == second
    text = "\n".join(first)
    assert len(text) > 1_000_000
    assert " the " in text and "assert" in text


def test_split_is_stable_and_disjoint():
    docs = [f"document number {i}" for i in range(2000)]
    train, val = split_documents(docs, 0.1)
    assert set(train).isdisjoint(val)
    assert 120 < len(val) < 280
    assert split_documents(list(reversed(docs)), 0.1)[1] == list(reversed(val))


def test_token_data_is_cached_and_packed(tmp_path):
    cache = tmp_path / "cache"
    started = time.perf_counter()
    data = build_token_data(_cfg(), seq_len=64, cache=cache)
    first = time.perf_counter() - started
    assert data.vocab_size == 1024
    assert data.train.batch([0])["input_ids"].shape == (1, 64)
    assert len(data.train) > 20 * len(data.val) / 2
    tokenizer_dirs = list((cache / "tokenizers").iterdir())
    started = time.perf_counter()
    again = build_token_data(_cfg(), seq_len=64, cache=cache)
    assert list((cache / "tokenizers").iterdir()) == tokenizer_dirs
    assert (again.train.blocks(3) == data.train.blocks(3)).all()
    assert time.perf_counter() - started < first


def test_text_files_txt_and_jsonl(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("First paragraph here.\n\nSecond one.\n")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": f"row {i}"}) for i in range(3)))
    docs = text_files(tmp_path, name="local", paths=[str(txt)])
    assert docs == ["First paragraph here.", "Second one."]
    assert text_files(tmp_path, name="local", paths=[str(jsonl)], text_key="body") == ["row 0", "row 1", "row 2"]
    with pytest.raises(ConfigError, match="data.text_key"):
        text_files(tmp_path, name="local", paths=[str(jsonl)], text_key="text")


def test_missing_local_file_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^data.paths: no such file"):
        text_files(tmp_path, name="local", paths=[str(tmp_path / "nope.txt")])


def test_hub_dataset_offline_fails_fast_with_a_clear_error(tmp_path):
    started = time.perf_counter()
    cfg = _cfg(source="hf", name="allenai/c4", config="en", split="train", streaming=False, text_key="text",
               max_documents=10)
    with pytest.raises(ConfigError, match=r"^data.name: cannot load 'allenai/c4'"):
        build_token_data(cfg, seq_len=64, cache=tmp_path)
    assert time.perf_counter() - started < 30


def test_block_sampler_is_a_pure_function_of_the_sample_index():
    sampler = BlockSampler(10, seed=3)
    order = sampler.indices(0, 25)
    assert sorted(order[:10]) == list(range(10)) and sorted(order[10:20]) == list(range(10))
    assert order[:10] != order[10:20]
    assert BlockSampler(10, seed=3).indices(17, 5) == order[17:22]
    assert BlockSampler(10, seed=4).indices(0, 10) != order[:10]


def test_wikitext_file_is_usable_as_local_text(shared_data: Path, tmp_path):
    docs = text_files(tmp_path, name="wikitext", paths=[str(shared_data / "wikitext-2" / "valid.txt")])
    assert len(docs) > 100
