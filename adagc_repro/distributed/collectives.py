"""Rank helpers and cross-rank reductions. Every function also works without a process group
(one process, world size 1), so the training loop has no `if distributed` branches.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def init_from_env(device_name: str) -> None:
    """Join the process group torchrun describes in the environment (no-op outside torchrun).

    On CUDA the group has a gloo side for CPU tensors (host reductions such as checkpoint sizes) and
    NCCL for the rest. Background checkpoint writes use a group of their own (`new_cpu_group`).
    """
    if "RANK" not in os.environ or is_initialized():
        return
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")


def new_cpu_group():
    """A new gloo group over every rank, or None without a process group. Every rank must call it,
    in the same order (it is a collective)."""
    return dist.new_group(backend="gloo") if is_initialized() else None


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """This rank's device: cuda:LOCAL_RANK under torchrun, else `device` unchanged."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


@contextlib.contextmanager
def main_rank_first():
    """Rank 0 runs the block first (e.g. fills an on-disk cache), then the others read what it wrote."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def mean_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a tensor, on its device, without reading it back (one all-reduce)."""
    if world_size() == 1:
        return values
    total = values.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / world_size()


def rank_share(global_count: int, what: str = "train.batch_size") -> tuple[int, int]:
    """(first, count) of this rank's contiguous share of `global_count` samples."""
    from adagc_repro.errors import ConfigError

    ranks = world_size()
    if global_count % ranks:
        raise ConfigError(what, f"the global batch of {global_count} does not split over {ranks} processes",
                          f"a multiple of {ranks}")
    count = global_count // ranks
    return rank() * count, count


def sum_across_ranks(value: int) -> int:
    """Sum of a host integer over ranks (a rare, host-side reduction, e.g. checkpoint sizes)."""
    if world_size() == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)  # CPU tensor: the group's gloo side on CUDA machines
    return int(total.item())


def max_across_ranks(value: float, device: torch.device) -> float:
    """Largest value of a host float over ranks (end-of-run facts such as peak memory)."""
    if world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())
