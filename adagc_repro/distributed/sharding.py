"""Where a rank's shard sits in a tensor FSDP2 sharded along dim 0 (a `Shard(0)` DTensor on a 1-D mesh):
torch.chunk's split, ceil(n / world) rows per rank and empty trailing shards, as FSDP2 and DTensor cut it."""

from __future__ import annotations

import torch


def local_rows(tensor: torch.Tensor) -> range:
    """The dim-0 indices of the full tensor that this rank's local shard holds."""
    placements = tensor.placements
    if tensor.device_mesh.ndim != 1 or not placements[0].is_shard(0):
        raise ValueError(f"expected a tensor sharded along dim 0 on a 1-D mesh, got {placements}")
    world, rank, rows = tensor.device_mesh.size(), tensor.device_mesh.get_local_rank(), tensor.shape[0]
    chunk = -(-rows // world)
    first = min(rank * chunk, rows)
    held = range(first, min(first + chunk, rows))
    if len(held) != tensor.to_local().shape[0]:
        raise ValueError(f"a local shard of {tensor.to_local().shape[0]} rows at rank {rank} of {world} does not "
                         f"follow torch.chunk over {rows} rows")
    return held
