"""WikiText loading: local files in every supported form, and a fast, explicit error offline."""

from __future__ import annotations

import json
import time

import pytest

from adagc_repro.errors import ConfigError
from adagc_repro.eval.wikitext import load_wikitext

ROWS = ["", " = Title = \n", "", " First line .\n", " Second line .\n"]
JOINED = "\n = Title = \n\n First line .\n Second line ."


def test_local_text_file_is_read_as_is(shared_data):
    path = shared_data / "wikitext-2" / "test.txt"
    assert load_wikitext(str(path)) == path.read_text(encoding="utf-8")


def test_jsonl_rows_are_joined_as_lines(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps({"text": row}) + "\n" for row in ROWS))
    assert load_wikitext(str(path)) == JOINED


def test_saved_dataset_dir_and_parquet(tmp_path):
    import datasets

    rows = datasets.Dataset.from_dict({"text": ROWS})
    datasets.DatasetDict({"test": rows, "validation": rows.select([1])}).save_to_disk(str(tmp_path / "dd"))
    assert load_wikitext(str(tmp_path / "dd"), split="test") == JOINED
    assert load_wikitext(str(tmp_path / "dd"), split="validation") == " = Title = "
    with pytest.raises(ConfigError, match="eval.wikitext.split"):
        load_wikitext(str(tmp_path / "dd"), split="train")
    rows.to_parquet(str(tmp_path / "test.parquet"))
    assert load_wikitext(str(tmp_path / "test.parquet")) == JOINED
    datasets.Dataset.from_dict({"body": ["x"]}).save_to_disk(str(tmp_path / "no_text"))
    with pytest.raises(ConfigError, match="no 'text' column"):
        load_wikitext(str(tmp_path / "no_text"))


def test_missing_local_file(tmp_path):
    with pytest.raises(ConfigError, match="eval.wikitext.path"):
        load_wikitext(str(tmp_path / "absent.txt"))


def test_offline_without_cache_fails_fast():
    start = time.perf_counter()
    with pytest.raises(ConfigError) as error:
        load_wikitext(None, name="wikitext-2-raw-v1", split="test")
    assert time.perf_counter() - start < 15
    assert error.value.key == "eval.wikitext.path"
    assert "offline and not cached" in str(error.value)
    assert "eval.wikitext.path=<file>" in str(error.value)
