"""What produced a run: code version (git SHA and uncommitted diff), packages, machine, command line."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

_DIFF_LIMIT = 200_000  # characters of `git diff` kept; larger diffs are truncated and marked
# Environment variables that change what torch compiles or which kernels it picks, hence speed and numerics.
TUNING_ENV_PREFIXES = ("TORCHINDUCTOR_", "TORCHDYNAMO_", "TORCH_COMPILE_", "TORCH_CUDNN_", "PYTORCH_CUDA_ALLOC_CONF",
                       "NVIDIA_TF32_OVERRIDE")
CACHE_LOCATIONS = ("TORCHINDUCTOR_CACHE_DIR",)  # where compiled code is kept, not what it is


def collect(argv: list[str]) -> dict[str, Any]:
    source = Path(__file__).resolve().parent.parent
    return {
        "command": argv,
        "cwd": str(Path.cwd()),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "git": _git(source),
        "versions": versions(),
        "tuning_env": tuning_env(),
        "packages": sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"]),
    }


def versions() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        **{name: _version_of(name) for name in ("transformers", "datasets", "tokenizers", "hydra-core", "omegaconf")},
    }


def tuning_env() -> dict[str, str]:
    """The set environment variables among TUNING_ENV_PREFIXES: settings a result depends on that no
    config file shows."""
    return {name: value for name, value in sorted(os.environ.items()) if is_tuning_variable(name)}


def is_tuning_variable(name: str) -> bool:
    return name.startswith(TUNING_ENV_PREFIXES) and name not in CACHE_LOCATIONS


def _version_of(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(source: Path) -> dict[str, Any] | None:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=source, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if sha is None:
        return None
    diff = git("diff", "HEAD") or ""
    return {
        "sha": sha.strip(),
        "dirty": bool(diff),
        "diff": diff[:_DIFF_LIMIT] + ("\n[truncated]" if len(diff) > _DIFF_LIMIT else ""),
    }
