"""Checkpoints that survive crashes and belong to their run.

Two backends behind one interface (`save`, `load_latest`, `export_final`):

* `Checkpointer` (one process): `step-NNNNNNNN.pt` (torch.save of plain state dicts) plus a `.json`
  sidecar written after it, holding its size and SHA-256. A checkpoint without a matching sidecar is
  incomplete or corrupt: loading warns and falls back to the previous one.
* `DistributedCheckpointer` (torchrun workers): `step-NNNNNNNN/` written with torch.distributed.checkpoint
  (model and optimizer sharded, loadable on another world size), plus one small `rank-R.pt` per rank
  (schedule, clipper, spike monitor, loop state, RNG) and a `complete.json` written last.

`RunCheckpoints` wraps either and records each finished checkpoint in the run folder
(`checkpoint.json`): a run resumes only from a checkpoint its own folder records, so checkpoints left
behind by a deleted or moved run folder are never resumed silently. Before each write the free disk
space is checked against the expected size; a failed write keeps the last good checkpoint.

Asynchronous writes (`train.async_checkpoint`, DCP only): a periodic checkpoint saved with
`background=True` is copied to host memory, its small `rank-R.pt` written, and its shards handed to
`dcp.async_save` (THREAD mode), so training continues while they are written; the write's collectives
run on a gloo group of their own. It counts only once every rank has finished writing: `complete.json`,
pruning and the run record wait for `finish`, which `record_if_written` calls at the first logging
boundary after every rank's write has ended, the next save calls first (one write in flight at a time,
so pruning and the keep=1 space check never see an unfinished one) and `background_writes` calls when
the training loop ends. After an error the write is waited for but never recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adagc_repro.atomic import build_dir, write_json

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
RECORD = "checkpoint.json"


class CheckpointSpaceError(OSError):
    """Not enough free disk space for the next checkpoint (one line: folder, bytes needed, bytes free)."""


class Checkpointer:
    def __init__(self, folder: Path, keep: int = 2):
        self.folder = Path(folder)
        self.keep = max(1, keep)

    format = "file"
    asynchronous = False  # one file, written at once

    def save(self, step: int, stateful: dict[str, Any], **extra: Any) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        payload = {name: obj.state_dict() for name, obj in stateful.items()}
        payload.update(extra, step=step, format=FORMAT_VERSION)
        make_room(self.folder, tensor_bytes(payload), self.candidates(), self.keep, _remove_file_checkpoint)
        path = self.folder / f"step-{step:08d}.pt"
        tmp = path.with_suffix(".pt.tmp")
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        write_json(path.with_suffix(".json"), {"step": step, "bytes": path.stat().st_size, "sha256": _sha256(path)})
        self._prune()
        return path

    def candidates(self) -> list[Path]:
        return sorted(self.folder.glob("step-*.pt"), reverse=True)

    def load_latest(self, stateful: dict[str, Any], up_to: int | None = None) -> dict[str, Any] | None:
        """Restore the newest valid checkpoint (of step <= `up_to`) into `stateful`; return its extras, or None."""
        for path in self.candidates():
            if up_to is not None and step_of(path) > up_to:
                continue
            problem = _verify(path)
            if problem:
                log.warning("checkpoint %s is unusable (%s); falling back to an earlier one", path.name, problem)
                continue
            payload = torch.load(path, map_location="cpu", weights_only=True)
            for name, obj in stateful.items():
                obj.load_state_dict(payload[name])
            return {k: v for k, v in payload.items() if k not in stateful}
        return None

    def export_final(self, model, tokenizer, dtype: torch.dtype = torch.float32) -> Path:
        """save_pretrained model (weights stored as `dtype`) + tokenizer into final_model/, replaced atomically."""
        final = self.folder / "final_model"

        def write(tmp: Path) -> None:
            model.save_pretrained(str(tmp), state_dict=cast_floats(model.state_dict(), dtype))
            tokenizer.save_pretrained(str(tmp))

        if final.exists():
            import shutil

            shutil.rmtree(final)
        return build_dir(final, write)

    def _prune(self) -> None:
        for old in self.candidates()[self.keep :]:
            _remove_file_checkpoint(old)


def _remove_file_checkpoint(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_suffix(".json").unlink(missing_ok=True)


@dataclass
class _BackgroundWrite:
    """A checkpoint whose shards DCP is writing in a thread, with what it cost training so far."""

    step: int
    path: Path
    future: Future
    started: float
    blocking_s: float
    done_at: float | None = None


class DistributedCheckpointer:
    """Sharded checkpoints with torch.distributed.checkpoint; every rank calls every method."""

    format = "dcp"

    def __init__(self, folder: Path, keep: int = 2, asynchronous: bool = False):
        self.folder = Path(folder)
        self.keep = max(1, keep)
        self.asynchronous = asynchronous
        self._writing: _BackgroundWrite | None = None
        self._group = None

    def candidates(self) -> list[Path]:
        return sorted((p for p in self.folder.glob("step-*") if p.is_dir()), reverse=True)

    def save(self, step: int, stateful: dict[str, Any], **extra: Any) -> Path:
        import torch.distributed.checkpoint as dcp

        path, sharded_state = self._begin(step, stateful, extra)
        dcp.save(sharded_state, checkpoint_id=str(path))
        self._complete(step, path)
        return path

    def start(self, step: int, stateful: dict[str, Any], **extra: Any) -> Path:
        """Begin writing a checkpoint in DCP's background thread; `finish` completes it. The state is
        copied to host memory before this returns, so training may change it at once."""
        import torch.distributed.checkpoint as dcp

        from adagc_repro.distributed import collectives

        started = time.perf_counter()
        path, sharded_state = self._begin(step, stateful, extra)
        if self._group is None:
            # Its own gloo group: the write's collectives run in a thread, and sharing the default group
            # with the loop's would let the two interleave in a different order on each rank. Gloo also
            # gives async_save the CPU backend it needs on CUDA.
            self._group = collectives.new_cpu_group()
        future = dcp.async_save(sharded_state, checkpoint_id=str(path), process_group=self._group)
        write = _BackgroundWrite(step, path, future, started, blocking_s=time.perf_counter() - started)
        future.add_done_callback(lambda _: setattr(write, "done_at", time.perf_counter()))
        self._writing = write
        return path

    def finish(self) -> _BackgroundWrite | None:
        """Wait for the checkpoint being written in the background (every rank), then mark it complete
        and prune; returns it, or None when none was being written."""
        write, self._writing = self._writing, None
        if write is None:
            return None
        waiting = time.perf_counter()
        write.future.result()
        done = time.perf_counter()
        write.blocking_s += done - waiting
        write.done_at = write.done_at or done  # result() may return before the done callback has run
        self._complete(write.step, write.path)
        return write

    def written_everywhere(self) -> bool:
        """True when a background write has ended on every rank (a host all-reduce; every rank calls it)."""
        from adagc_repro.distributed import collectives

        if self._writing is None:
            return False
        return collectives.sum_across_ranks(int(not self._writing.future.done())) == 0

    def abandon(self) -> None:
        """After an error: let the background write end, never marking it complete. No collective:
        other ranks may be gone."""
        write, self._writing = self._writing, None
        if write is not None:
            with contextlib.suppress(Exception):  # the error being raised is the one to report
                write.future.result()

    def _begin(self, step: int, stateful: dict[str, Any], extra: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
        """Make room, write this rank's small state; returns the folder and the sharded state DCP writes."""
        from adagc_repro.distributed import collectives

        sharded, local = _split_state(stateful)
        sharded_state = {name: obj.state_dict() for name, obj in sharded.items()}
        local_state = {name: obj.state_dict() for name, obj in local.items()}
        local_state.update(extra, step=step, format=FORMAT_VERSION)
        needed = collectives.sum_across_ranks(tensor_bytes(sharded_state) + tensor_bytes(local_state))
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"step-{step:08d}"
        # Every rank checks (the same answer on a shared disk), so all stop together when space is short.
        make_room(self.folder, needed, self.candidates(), self.keep, _remove_folder)
        collectives.barrier()
        if collectives.is_main():
            (path / "complete.json").unlink(missing_ok=True)
        path.mkdir(exist_ok=True)
        torch.save(local_state, path / f"rank-{collectives.rank()}.pt")
        return path, sharded_state

    def _complete(self, step: int, path: Path) -> None:
        from adagc_repro.distributed import collectives

        collectives.barrier()  # every rank's files are written
        if collectives.is_main():
            write_json(path / "complete.json", {"step": step, "world_size": collectives.world_size()})
            self._prune()
        collectives.barrier()

    def _prune(self) -> None:
        """Keep the newest `keep` complete checkpoints. Nothing is being written now, so any folder
        without complete.json is a write a crash cut short; it goes too (it would count as one kept)."""
        complete = [p for p in self.candidates() if (p / "complete.json").exists()]
        for old in set(self.candidates()) - set(complete[: self.keep]):
            _remove_folder(old)

    def load_latest(self, stateful: dict[str, Any], up_to: int | None = None) -> dict[str, Any] | None:
        """Load the newest complete checkpoint (step <= `up_to`) into `stateful`, resharding the model
        and optimizer to this world size. Ranks beyond the saved world size take rank 0's small state
        (the replicated part) and reseed their RNG from (seed, step, rank)."""
        import torch.distributed.checkpoint as dcp

        from adagc_repro.distributed import collectives

        for path in self.candidates():
            if (up_to is not None and step_of(path) > up_to) or not (path / "complete.json").exists():
                continue
            sharded, local = _split_state(stateful)
            target = {name: obj.state_dict() for name, obj in sharded.items()}  # allocated: DCP fills in place
            dcp.load(target, checkpoint_id=str(path))
            for name, obj in sharded.items():
                obj.load_state_dict(target[name])
            own = path / f"rank-{collectives.rank()}.pt"
            payload = torch.load(own if own.exists() else path / "rank-0.pt", map_location="cpu", weights_only=True)
            if not own.exists():
                payload.pop("rng", None)
            for name, obj in local.items():
                obj.load_state_dict(payload[name])
            return {k: v for k, v in payload.items() if k not in local}
        return None

    def export_final(self, model, tokenizer, dtype: torch.dtype = torch.float32) -> Path:
        """Gather the full model on rank 0 and save_pretrained it (weights stored as `dtype`, with the
        tokenizer) into final_model/."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from adagc_repro.distributed import collectives
        from adagc_repro.distributed.parallelize import with_scalar_shapes

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        full = with_scalar_shapes(model, full)
        final = self.folder / "final_model"
        if collectives.is_main():

            def write(tmp: Path) -> None:
                model.save_pretrained(str(tmp), state_dict=cast_floats(full, dtype))
                tokenizer.save_pretrained(str(tmp))

            shutil.rmtree(final, ignore_errors=True)
            build_dir(final, write)
        collectives.barrier()
        return final


def cast_floats(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The state dict with its floating-point tensors stored as `dtype` (integer buffers untouched)."""
    return {key: value.to(dtype) if value.is_floating_point() else value for key, value in state.items()}


def _remove_folder(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class _ModelAndOptimizer:
    """Model and optimizer as one DCP Stateful, in the FQN-keyed layout DCP reshards."""

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        return {"model": model_state, "optimizer": optim_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def _split_state(stateful: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sharded part (model + optimizer, through DCP) and the small per-rank rest."""
    local = {k: v for k, v in stateful.items() if k not in ("model", "optimizer")}
    return {"app": _ModelAndOptimizer(stateful["model"], stateful["optimizer"])}, local


class RunCheckpoints:
    """A backend plus the run folder's record of which checkpoint belongs to this run."""

    def __init__(self, backend, run_dir: Path, record: dict[str, Any] | None):
        self.backend, self.record_path, self.record = backend, Path(run_dir) / RECORD, record

    def save(self, step: int, stateful: dict[str, Any], *, background: bool = False, **extra: Any) -> Path:
        """Write a checkpoint and record it; with `background` (and an asynchronous backend) only start
        writing it: it is recorded by `finish`."""
        self.finish()  # one write at a time (as torchtitan does); the previous one counts first
        if background and self.backend.asynchronous:
            return self.backend.start(step, stateful, **extra)
        path = self.backend.save(step, stateful, **extra)
        self._record(step)
        return path

    def finish(self) -> None:
        """Wait for a checkpoint being written in the background and record it, saying what it cost."""
        write = self.backend.finish() if self.backend.asynchronous else None
        if write is not None:
            self._record(write.step)
            notice(f"checkpoint step {write.step} recorded: written in {write.done_at - write.started:.1f} s, "
                   f"{write.blocking_s:.1f} s of it blocking training")

    def record_if_written(self) -> None:
        """At a logging boundary: record a background checkpoint whose write has ended on every rank, so
        the run folder points at it without waiting for the next save."""
        if self.backend.asynchronous and self.backend.written_everywhere():
            self.finish()

    @contextlib.contextmanager
    def background_writes(self):
        """Checkpoints started inside the block are finished and recorded when it ends; after an error
        the one being written is waited for but not recorded."""
        try:
            yield
        except BaseException:
            if self.backend.asynchronous:
                self.backend.abandon()
            raise
        self.finish()

    def _record(self, step: int) -> None:
        from adagc_repro.distributed import collectives

        if collectives.is_main():
            write_json(self.record_path, {"folder": str(self.backend.folder), "step": step, "format": self.backend.format})

    def load_latest(self, stateful: dict[str, Any]) -> dict[str, Any] | None:
        if self.record is None or self.record.get("folder") != str(self.backend.folder):
            self._forget_foreign_checkpoints()
            return None
        restored = self.backend.load_latest(stateful, up_to=int(self.record["step"]))
        if restored is None:
            notice(f"the checkpoint of step {self.record['step']} recorded in {self.record_path} is missing or "
                   "unusable; starting fresh")
        return restored

    def export_final(self, model, tokenizer, dtype: torch.dtype = torch.float32) -> Path:
        return self.backend.export_final(model, tokenizer, dtype)

    def _forget_foreign_checkpoints(self) -> None:
        from adagc_repro.distributed import collectives

        if self.backend.candidates() and collectives.is_main():
            notice(f"checkpoints in {self.backend.folder} are not recorded by run folder "
                   f"{self.record_path.parent}; starting fresh (they will be replaced)")
            shutil.rmtree(self.backend.folder, ignore_errors=True)
        collectives.barrier()


BACKENDS = {"file": Checkpointer, "dcp": DistributedCheckpointer}


def open_checkpoints(folder: Path, run_dir: Path, *, keep: int, distributed: bool,
                     asynchronous: bool) -> RunCheckpoints:
    """The run keeps the format it started with (DCP loads on any world size, one process included);
    a new run uses DCP when distributed, else single files. `asynchronous` applies to DCP only."""
    path = Path(run_dir) / RECORD
    record = json.loads(path.read_text()) if path.exists() else None
    fmt = record["format"] if record and record.get("format") in BACKENDS else "dcp" if distributed else "file"
    backend = DistributedCheckpointer(folder, keep, asynchronous) if fmt == "dcp" else Checkpointer(folder, keep)
    return RunCheckpoints(backend, run_dir, record)


def notice(message: str) -> None:
    """A one-line message for the user on stderr (rank 0 only)."""
    from adagc_repro.distributed import collectives

    if collectives.is_main():
        print(message, file=sys.stderr, flush=True)


def tensor_bytes(state: Any) -> int:
    """Bytes of every tensor in a nested state dict: the size a checkpoint of it needs on disk."""
    if isinstance(state, torch.Tensor):
        local = state.to_local() if hasattr(state, "to_local") else state
        return local.numel() * local.element_size()
    if isinstance(state, dict):
        return sum(tensor_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(tensor_bytes(v) for v in state)
    return 0


def make_room(folder: Path, needed: int, existing: list[Path], keep: int, remove) -> None:
    """Check free space for a checkpoint of `needed` bytes. With keep=1, when only removing the previous
    checkpoint makes room (a 7B checkpoint with fp32 Adam state is ~80 GB), it is removed first, saying
    so; otherwise the save stops with one line naming the folder, the bytes needed and the bytes free."""
    free = shutil.disk_usage(folder).free
    if free < needed and keep == 1 and existing and free + sum(map(_bytes_on_disk, existing)) >= needed:
        notice(f"removing {existing[0].name} before writing the next checkpoint "
               f"(train.keep_checkpoints=1 and {folder} lacks room for two)")
        for old in existing:
            remove(old)
        return
    ensure_free_space(folder, needed, existing)


def _bytes_on_disk(path: Path) -> int:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files)


def ensure_free_space(folder: Path, needed: int, existing: list[Path]) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        kept = f"; the last good checkpoint ({existing[0].name}) is kept" if existing else ""
        raise CheckpointSpaceError(f"checkpoint: {folder} needs {needed} bytes, {free} free{kept}")


def step_of(path: Path) -> int:
    return int(path.name.split("-")[1].split(".")[0])


def _verify(path: Path) -> str | None:
    sidecar = path.with_suffix(".json")
    if not sidecar.exists():
        return "no integrity record; the write did not finish"
    try:
        record = json.loads(sidecar.read_text())
    except ValueError:
        return "unreadable integrity record"
    if path.stat().st_size != record.get("bytes"):
        return f"size {path.stat().st_size} != recorded {record.get('bytes')}"
    if _sha256(path) != record.get("sha256"):
        return "checksum mismatch"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()
