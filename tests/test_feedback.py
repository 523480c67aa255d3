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


def test_checkpoint_writes_and_the_export_say_so(tmp_path, capfd):
    from conftest import tiny_overrides

    from adagc_repro import config as config_lib
    from adagc_repro.train import train

    cfg = config_lib.compose(tiny_overrides(tmp_path, "train.checkpoint_every=2"))
    train(cfg, tmp_path / "run")
    err = capfd.readouterr().err
    # periodic checkpoints (steps 2 of 4; the last step's is the final one), then the final checkpoint and export
    assert "writing checkpoint step 2: done in" in err and "writing checkpoint step 4" not in err
    assert "writing the final checkpoint (step 4): done in" in err
    assert "exporting the final model: done in" in err


def test_a_wait_inside_training_shows_in_the_progress_bar_and_is_then_cleared():
    from adagc_repro.run_log import _ProgressBar

    bar = _ProgressBar(4, 0, enabled=True, every=1)
    try:
        bar.advance({"step": 1, "loss": 2.0, "grad_norm": 1.0, "tokens_per_s": 10.0})
        before = bar._progress.tasks[0].fields["status"]
        with bar.note("writing checkpoint step 1"):
            assert bar._progress.tasks[0].fields["status"] == "writing checkpoint step 1 …"
        assert bar._progress.tasks[0].fields["status"] == before
    finally:
        bar.stop()
