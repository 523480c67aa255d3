"""Every wait of more than a moment says what it is waiting for (and how long it took)."""

from __future__ import annotations

import io

import pytest

from adagc_repro.data import shards
from adagc_repro.feedback import status

DOCUMENTS = [f"document {i}: " + "the quick brown fox jumps over the lazy dog " * 20 for i in range(40)]


def test_status_prints_the_wait_and_its_time():
    stream = io.StringIO()
    with status("packing", stream=stream):
        pass
    lines = stream.getvalue().splitlines()
    assert lines[0] == "packing …" and lines[1].startswith("packing: done in ")


def test_status_says_when_the_wait_failed():
    stream = io.StringIO()
    with pytest.raises(RuntimeError), status("exporting", stream=stream):
        raise RuntimeError("disk full")
    assert stream.getvalue().splitlines()[-1].startswith("exporting: failed after ")


def test_tokenizer_training_and_sharding_announce_themselves_once(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(DOCUMENTS) + "\n")
    data_cfg = {"source": "text_files", "name": "t", "paths": [str(corpus)], "text_key": "text", "tokenizer": None,
                "vocab_size": 300, "val_fraction": 0.1}
    folder = shards.prepare(data_cfg, tmp_path / "cache", workers=1)
    err = capsys.readouterr().err
    assert "training a BPE tokenizer (vocab 300) on up to" in err
    assert f"tokenizing the data into shards in {folder}: done in" in err
    assert shards.prepare(data_cfg, tmp_path / "cache", workers=1) == folder  # cached: nothing to wait for
    assert capsys.readouterr().err == ""
