"""Asynchronous DCP checkpoints (`train.async_checkpoint`), in one process with a one-rank gloo group:
an async checkpoint holds exactly what a synchronous one holds and training resumed from it continues to
the same losses; it counts (complete.json, pruning, the run record) only once written, and never after an
error; changing the parameters as soon as the save returns does not reach it. The 2-process path (FSDP2,
a SIGKILL, resume) is tests/test_distributed_train.py."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from distributed_helpers import tiny_llama
from torch.distributed.checkpoint.state_dict import get_state_dict

from adagc_repro.checkpoint import DistributedCheckpointer, RunCheckpoints


@pytest.fixture
def one_rank():
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture
def held_writes(monkeypatch) -> threading.Event:
    """DCP's shard writes wait until the test sets the returned event."""
    from torch.distributed.checkpoint import FileSystemWriter

    release = threading.Event()
    write_data = FileSystemWriter.write_data

    def held(self, *args, **kwargs):
        assert release.wait(timeout=30), "the shard writes were never released"
        return write_data(self, *args, **kwargs)

    monkeypatch.setattr(FileSystemWriter, "write_data", held)
    return release


def _parts(seed: int = 0) -> dict:
    from adagc_repro.clipping import build_clipper

    model = tiny_llama(seed)
    return {"model": model, "optimizer": torch.optim.AdamW(model.parameters(), lr=1e-2),
            "clipper": build_clipper("adagc", warmup_steps=0)}


def _train_step(parts: dict, seed: int) -> float:
    batch = torch.randint(0, 257, (2, 16), generator=torch.Generator().manual_seed(seed))
    loss = parts["model"](input_ids=batch, labels=batch).loss
    loss.backward()
    parts["clipper"](parts["model"], loss=loss.detach())
    parts["optimizer"].step()
    parts["optimizer"].zero_grad(set_to_none=True)
    return loss.item()


def _loaded(backend: DistributedCheckpointer) -> dict:
    parts = _parts(seed=1)  # other weights: everything compared below must come from the checkpoint
    assert backend.load_latest(parts)["step"] == 1
    return parts


def _state(parts: dict) -> tuple:
    return (*get_state_dict(parts["model"], parts["optimizer"]), parts["clipper"].state_dict())


def _equal(a, b) -> bool:
    """Nested states equal bit for bit."""
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(_equal, a, b))
    return a == b


def _record(run_dir) -> int:
    return json.loads((run_dir / "checkpoint.json").read_text())["step"]


def test_an_async_checkpoint_equals_a_synchronous_one_and_resumes_to_the_same_losses(one_rank, tmp_path):
    parts = _parts()
    _train_step(parts, seed=0)
    synchronous = DistributedCheckpointer(tmp_path / "sync")
    synchronous.save(1, parts)
    asynchronous = DistributedCheckpointer(tmp_path / "async", asynchronous=True)
    asynchronous.start(1, parts)
    expected = [_train_step(parts, seed) for seed in (1, 2)]  # while the shards are being written
    asynchronous.finish()

    from_sync, from_async = _loaded(synchronous), _loaded(asynchronous)
    assert _equal(_state(from_async), _state(from_sync))
    assert [_train_step(from_async, seed) for seed in (1, 2)] == expected


def test_an_async_checkpoint_counts_only_once_written_and_the_previous_one_stays_until_then(
        one_rank, tmp_path, held_writes, capsys):
    parts = _parts()
    backend = DistributedCheckpointer(tmp_path / "ckpt", keep=1, asynchronous=True)
    checkpoints = RunCheckpoints(backend, tmp_path, None)
    held_writes.set()
    checkpoints.save(1, parts)  # not in the background: recorded at once
    held_writes.clear()
    assert _record(tmp_path) == 1

    checkpoints.save(2, parts, background=True)
    step1, step2 = backend.folder / "step-00000001", backend.folder / "step-00000002"
    assert not (step2 / "complete.json").exists() and _record(tmp_path) == 1
    assert (step1 / "complete.json").exists(), "keep=1 removed the last good checkpoint during the write"

    threading.Timer(0.2, held_writes.set).start()
    checkpoints.save(3, parts, background=True)  # first waits for step 2, which then counts
    assert (step2 / "complete.json").exists() and _record(tmp_path) == 2
    assert not step1.exists()
    assert not (backend.folder / "step-00000003" / "complete.json").exists()
    checkpoints.finish()
    assert _record(tmp_path) == 3 and [p.name for p in backend.candidates()] == ["step-00000003"]
    err = capsys.readouterr().err
    assert "checkpoint step 2 recorded: written in" in err and "s of it blocking training" in err


def test_with_async_checkpoints_off_a_periodic_checkpoint_is_recorded_at_once(one_rank, tmp_path):
    checkpoints = RunCheckpoints(DistributedCheckpointer(tmp_path / "ckpt"), tmp_path, None)
    checkpoints.save(1, _parts(), background=True)
    assert _record(tmp_path) == 1 and (tmp_path / "ckpt" / "step-00000001" / "complete.json").exists()


def test_after_an_error_the_checkpoint_being_written_is_waited_for_but_not_recorded(one_rank, tmp_path,
                                                                                   held_writes):
    parts = _parts()
    backend = DistributedCheckpointer(tmp_path / "ckpt", asynchronous=True)
    checkpoints = RunCheckpoints(backend, tmp_path, None)
    held_writes.set()
    checkpoints.save(1, parts)
    held_writes.clear()
    with pytest.raises(RuntimeError, match="a crash"), checkpoints.background_writes():
        checkpoints.save(2, parts, background=True)
        held_writes.set()
        raise RuntimeError("a crash")
    step2 = backend.folder / "step-00000002"
    assert (step2 / ".metadata").exists(), "the write was not waited for"
    assert not (step2 / "complete.json").exists() and _record(tmp_path) == 1
    assert _loaded(backend)  # the resume takes step 1


def test_changing_the_parameters_right_after_an_async_save_does_not_reach_the_checkpoint(one_rank, tmp_path,
                                                                                        held_writes):
    parts = _parts()
    saved = {name: value.clone() for name, value in parts["model"].state_dict().items()}
    backend = DistributedCheckpointer(tmp_path, asynchronous=True)
    backend.start(1, parts)
    with torch.no_grad():
        for param in parts["model"].parameters():
            param.add_(1.0)
    held_writes.set()  # the shards are written only now, after the change
    backend.finish()
    for name, value in _loaded(backend)["model"].state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_a_write_cut_short_by_a_crash_neither_counts_as_kept_nor_stays(one_rank, tmp_path):
    backend = DistributedCheckpointer(tmp_path, keep=1)
    (tmp_path / "step-00000009").mkdir()  # a later step's write, killed before complete.json
    backend.save(2, _parts())
    assert [p.name for p in backend.candidates()] == ["step-00000002"]


def test_a_background_checkpoint_is_recorded_at_the_first_boundary_after_its_write_ends(one_rank, tmp_path,
                                                                                      held_writes):
    backend = DistributedCheckpointer(tmp_path / "ckpt", asynchronous=True)
    checkpoints = RunCheckpoints(backend, tmp_path, None)
    checkpoints.save(1, _parts(), background=True)
    checkpoints.record_if_written()  # still being written: not recorded, and no wait
    assert not (tmp_path / "checkpoint.json").exists()
    held_writes.set()
    backend._writing.future.result(timeout=30)
    checkpoints.record_if_written()
    assert _record(tmp_path) == 1 and (backend.folder / "step-00000001" / "complete.json").exists()
