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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
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


class DistributedCheckpointer:
    """Sharded checkpoints with torch.distributed.checkpoint; every rank calls every method."""

    format = "dcp"

    def __init__(self, folder: Path, keep: int = 2):
        self.folder = Path(folder)
        self.keep = max(1, keep)

    def candidates(self) -> list[Path]:
        return sorted((p for p in self.folder.glob("step-*") if p.is_dir()), reverse=True)

    def save(self, step: int, stateful: dict[str, Any], **extra: Any) -> Path:
        import torch.distributed.checkpoint as dcp

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
        dcp.save(sharded_state, checkpoint_id=str(path))
        torch.save(local_state, path / f"rank-{collectives.rank()}.pt")
        collectives.barrier()
        if collectives.is_main():
            write_json(path / "complete.json", {"step": step, "world_size": collectives.world_size()})
            for old in self.candidates()[self.keep :]:
                _remove_folder(old)
        collectives.barrier()
        return path

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

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
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

    def save(self, step: int, stateful: dict[str, Any], **extra: Any) -> Path:
        from adagc_repro.distributed import collectives

        path = self.backend.save(step, stateful, **extra)
        if collectives.is_main():
            write_json(self.record_path, {"folder": str(self.backend.folder), "step": step, "format": self.backend.format})
        return path

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


def open_checkpoints(folder: Path, run_dir: Path, *, keep: int, distributed: bool) -> RunCheckpoints:
    """The run keeps the format it started with (DCP loads on any world size, one process included);
    a new run uses DCP when distributed, else single files."""
    path = Path(run_dir) / RECORD
    record = json.loads(path.read_text()) if path.exists() else None
    fmt = record["format"] if record and record.get("format") in BACKENDS else "dcp" if distributed else "file"
    return RunCheckpoints(BACKENDS[fmt](folder, keep), run_dir, record)


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
