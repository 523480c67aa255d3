"""torchrun on 2 GPUs with NCCL: DDP and FSDP2 match one GPU in fp32, also with Muon (each sharded
matrix orthogonalised on one rank) and with a Mixtral whose expert stacks are sharded and clipped per
expert; FSDP2 in bf16 with activation checkpointing trains; FSDP2 writes its periodic checkpoints
asynchronously. Needs two CUDA devices."""

from __future__ import annotations

import json

import pytest
import torch
from test_distributed_train import STEPS, _losses, _rows, _run

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices"),
]
CUDA_FP32 = ("train.device=cuda", "train.precision=fp32", "train.batch_size=8", "train.seq_len=128")


@pytest.fixture(scope="module")
def one_gpu(tmp_path_factory) -> list[float]:
    folder = tmp_path_factory.mktemp("one_gpu")
    _run(folder, *CUDA_FP32)
    return _losses(folder / "results")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_gpus_match_one_in_fp32(one_gpu, tmp_path, strategy):
    _run(tmp_path, *CUDA_FP32, f"parallel={strategy}", "parallel.nproc_per_node=2")
    got = _losses(tmp_path / "results")
    assert len(got) == len(one_gpu) == STEPS
    assert max(abs(a - b) for a, b in zip(got, one_gpu, strict=True)) <= 1e-3, (got, one_gpu)


@pytest.mark.parametrize("setting", [("optim=muon",), ("model=mixtral_tiny",), ("model=mixtral_tiny", "optim=muon")],
                         ids=["muon", "mixtral", "mixtral-muon"])
def test_fsdp2_on_two_gpus_matches_one_with_muon_and_with_sharded_experts(tmp_path, setting):
    _run(tmp_path / "one", *CUDA_FP32, *setting)
    _run(tmp_path / "two", *CUDA_FP32, *setting, "parallel=fsdp2", "parallel.nproc_per_node=2")
    one, two = _losses(tmp_path / "one" / "results"), _losses(tmp_path / "two" / "results")
    assert len(one) == len(two) == STEPS
    assert max(abs(a - b) for a, b in zip(one, two, strict=True)) <= 1e-3, (one, two)


def test_fsdp2_bf16_with_activation_checkpointing_trains(tmp_path):
    _run(tmp_path, "train.device=cuda", "train.precision=bf16", "train.batch_size=8", "train.seq_len=128",
         "parallel=fsdp2", "parallel.nproc_per_node=2", "train.activation_checkpointing=full")
    (run_dir,) = (tmp_path / "results" / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2
    # MFU of both GPUs together: model FLOPs of the steady-state tokens/s over the two GPUs' dense peak
    assert summary["mfu"] == pytest.approx(
        100.0 * summary["flops_per_token"] * summary["tokens_per_s"] / summary["peak_flops"])
    rows = _rows(tmp_path / "results")
    assert all(row["loss"] is not None for row in rows) and rows[-1]["loss"] < rows[0]["loss"]
    assert {row["clip/collectives"] for row in rows} == {1}


def test_fsdp2_writes_checkpoints_asynchronously_over_nccl_and_gloo(tmp_path, capfd):
    """async_save's own gloo group beside NCCL training, before a 7B run relies on it."""
    _run(tmp_path, *CUDA_FP32, "parallel=fsdp2", "parallel.nproc_per_node=2", "train.checkpoint_every=2",
         "train.async_checkpoint=true")
    (run_dir,) = (tmp_path / "results" / "runs").iterdir()
    assert (run_dir / "DONE").exists()
    record = json.loads((run_dir / "checkpoint.json").read_text())
    assert record["format"] == "dcp" and record["step"] == STEPS
    output = "".join(capfd.readouterr())  # the workers write to this process's stdout and stderr
    assert all(f"checkpoint step {step} recorded" in output for step in range(2, STEPS, 2)), output[-3000:]
