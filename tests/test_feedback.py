"""Every wait of more than a moment says what it is waiting for (and how long it took)."""

from __future__ import annotations

import io

import pytest

from adagc_repro.data import pack_blocks
from adagc_repro.data.tokenizer import load_or_train_tokenizer
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


def test_tokenizer_training_and_packing_announce_themselves_once(tmp_path, capsys):
    tokenizer = load_or_train_tokenizer(None, DOCUMENTS, 300, tmp_path)
    pack_blocks(DOCUMENTS, tokenizer, 32, tmp_path)
    err = capsys.readouterr().err
    assert "training a BPE tokenizer (vocab 300) on 40 documents …" in err
    assert "tokenizing and packing 40 documents into blocks of 32 tokens: done in" in err
    load_or_train_tokenizer(None, DOCUMENTS, 300, tmp_path)  # cached: nothing to wait for, nothing said
    pack_blocks(DOCUMENTS, tokenizer, 32, tmp_path)
    assert capsys.readouterr().err == ""
