"""The pre-save disk-space check: one line naming the folder, the bytes needed and the bytes free."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch

from adagc_repro import checkpoint
from adagc_repro.checkpoint import Checkpointer, CheckpointSpaceError

Usage = namedtuple("Usage", "total used free")


class _Weights:
    def __init__(self, numel: int):
        self.value = torch.ones(numel, dtype=torch.float32)

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"].clone()


def _free(monkeypatch, free: int) -> None:
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: Usage(10**12, 0, free))


def test_a_checkpoint_that_does_not_fit_stops_with_one_line_and_keeps_the_last_good_one(tmp_path, monkeypatch):
    saver = Checkpointer(tmp_path, keep=2)
    saver.save(1, {"weights": _Weights(1000)})
    _free(monkeypatch, 123)
    with pytest.raises(CheckpointSpaceError) as error:
        saver.save(2, {"weights": _Weights(1000)})
    assert str(error.value) == (f"checkpoint: {tmp_path} needs 4000 bytes, 123 free; "
                                "the last good checkpoint (step-00000001.pt) is kept")
    assert [p.name for p in saver.candidates()] == ["step-00000001.pt"]
    restored = _Weights(1000)
    restored.value.zero_()
    assert saver.load_latest({"weights": restored})["step"] == 1 and restored.value.sum() == 1000


def test_keep_one_removes_the_previous_checkpoint_only_when_that_makes_room(tmp_path, monkeypatch, capsys):
    saver = Checkpointer(tmp_path, keep=1)
    saver.save(1, {"weights": _Weights(1000)})
    _free(monkeypatch, 3999)  # the previous file (> 4000 bytes with its header) frees enough
    saver.save(2, {"weights": _Weights(1000)})
    assert [p.name for p in saver.candidates()] == ["step-00000002.pt"]
    assert "removing step-00000001.pt before writing the next checkpoint" in capsys.readouterr().err
    _free(monkeypatch, 10)  # a larger checkpoint would not fit even without it: fail, keep it
    with pytest.raises(CheckpointSpaceError, match="needs 20000 bytes, 10 free"):
        saver.save(3, {"weights": _Weights(5000)})
    assert [p.name for p in saver.candidates()] == ["step-00000002.pt"]
