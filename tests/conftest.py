"""Test-wide guards: fully offline, no writes outside tmp dirs, GPU tests skipped without CUDA."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path

import pytest

_SANDBOX = Path(tempfile.mkdtemp(prefix="adagc-tests-"))
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    HF_HOME=str(_SANDBOX / "hf"),
    WANDB_MODE="disabled",
    WANDB_SILENT="true",
    WANDB_DIR=str(_SANDBOX / "wandb"),
    ADAGC_REPRO_CACHE=str(_SANDBOX / "cache"),
    TOKENIZERS_PARALLELISM="false",
    # Tiny test models gain nothing from a second thread, and two threads contending with another
    # process on a 2-core machine run several times slower than one.
    OMP_NUM_THREADS="1",
    MKL_NUM_THREADS="1",
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", None, ""}


def _deny_network(event: str, args: tuple) -> None:
    """Fail loudly on any attempt to reach a non-loopback host."""
    if event == "socket.getaddrinfo" and args[0] not in _LOCAL_HOSTS:
        raise ConnectionError(f"tests must not touch the network (getaddrinfo {args[0]!r})")
    if event == "socket.connect":
        address = args[1]
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and host not in _LOCAL_HOSTS and not str(host).startswith("127."):
            raise ConnectionError(f"tests must not touch the network (connect {address!r})")


sys.addaudithook(_deny_network)
socket.setdefaulttimeout(5)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def pytest_collection_finish(session):
    """A selected test runs on gloo ranks: start them now (see distributed_helpers)."""
    if not session.config.option.collectonly and any(
            getattr(getattr(item, "module", None), "run_on_ranks", None) for item in session.items):
        from distributed_helpers import start_ranks

        start_ranks()


@pytest.fixture
def shared_data() -> Path:
    """WikiText-2 and other offline test data shipped beside the repository."""
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def tiny_overrides(tmp_path: Path, *extra: str) -> list[str]:
    """A run of a few CPU steps with results and checkpoints under tmp_path (shared data cache)."""
    return [
        f"paths.results={tmp_path / 'results'}",
        f"paths.checkpoints={tmp_path / 'ckpt'}",
        "train.steps=4",
        "train.batch_size=2",
        "train.seq_len=64",
        "train.val_batches=1",
        "train.val_every=0",
        "train.checkpoint_every=0",
        "train.progress=false",
        *extra,
    ]


@pytest.fixture(scope="session")
def prepared_data() -> None:
    """The tiny runs' tokenizer and shards, in the session cache. Tests that train several runs at once
    ask for it first: processes preparing the same shards at the same time race (the first to finish
    removes the others' half-written files)."""
    from adagc_repro.config import compose
    from adagc_repro.data.shards import prepare

    cfg = compose(tiny_overrides(_SANDBOX))
    prepare(cfg.data, Path(cfg.paths.cache))


@pytest.fixture
def tiny(tmp_path):
    """Factory: tiny(*extra_overrides) -> overrides for a tiny CPU run in tmp_path."""
    return lambda *extra: tiny_overrides(tmp_path, *extra)
