"""Checkpoints that survive crashes: atomic, verified, keep-last-k, never unpickling arbitrary objects.

Each checkpoint is `step-NNNNNNNN.pt` (torch.save of plain state dicts) plus a `.json` sidecar written
after it, holding its size and SHA-256. A checkpoint without a matching sidecar is incomplete or
corrupt: loading warns and falls back to the previous one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from adagc_repro.atomic import build_dir, write_json

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


class Checkpointer:
    def __init__(self, folder: Path, keep: int = 2):
        self.folder = Path(folder)
        self.keep = max(1, keep)

    def save(self, step: int, stateful: dict[str, Any], **extra: Any) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        payload = {name: obj.state_dict() for name, obj in stateful.items()}
        payload.update(extra, step=step, format=FORMAT_VERSION)
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

    def load_latest(self, stateful: dict[str, Any]) -> dict[str, Any] | None:
        """Restore the newest valid checkpoint into `stateful`; return its extra entries, or None."""
        for path in self.candidates():
            problem = _verify(path)
            if problem:
                log.warning("checkpoint %s is unusable (%s); falling back to an earlier one", path.name, problem)
                continue
            payload = torch.load(path, map_location="cpu", weights_only=True)
            for name, obj in stateful.items():
                obj.load_state_dict(payload[name])
            return {k: v for k, v in payload.items() if k not in stateful}
        return None

    def export_final(self, model, tokenizer) -> Path:
        """save_pretrained model + tokenizer into final_model/, replaced atomically."""
        final = self.folder / "final_model"

        def write(tmp: Path) -> None:
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))

        if final.exists():
            import shutil

            shutil.rmtree(final)
        return build_dir(final, write)

    def _prune(self) -> None:
        for old in self.candidates()[self.keep :]:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)


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
