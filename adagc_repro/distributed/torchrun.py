"""The torchrun command line that starts a run's workers (`python -m adagc_repro.worker <run_dir>`).

One node: a c10d rendezvous on `localhost:0` picks a free port, so concurrent jobs never collide.
Several nodes (`parallel.nnodes > 1`): every node runs the same command with its `node_rank` and the
shared `rdzv_endpoint`; under Slurm both come from the job's environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def processes_per_node(parallel: Mapping) -> int:
    """`parallel.nproc_per_node`, where 0 means every visible GPU (one process on a CPU-only machine)."""
    count = int(parallel["nproc_per_node"])
    return count if count > 0 else max(1, visible_gpus())


def world_size(parallel: Mapping) -> int:
    return processes_per_node(parallel) * int(parallel["nnodes"])


def node_rank(parallel: Mapping, env: Mapping[str, str] = os.environ) -> int:
    return int(env.get("SLURM_NODEID", parallel["node_rank"]))


def torchrun_command(parallel: Mapping, run_dir: Path, run_id: str, env: Mapping[str, str] = os.environ) -> list[str]:
    nnodes = int(parallel["nnodes"])
    endpoint = parallel["rdzv_endpoint"]
    if nnodes > 1 and endpoint == "localhost:0":
        endpoint = f"{_first_slurm_host(env)}:29500" if "SLURM_JOB_NODELIST" in env else endpoint
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", str(nnodes),
        "--node-rank", str(node_rank(parallel, env)),
        "--nproc-per-node", str(processes_per_node(parallel)),
        "--rdzv-backend", "c10d",
        "--rdzv-endpoint", str(endpoint),
        "--rdzv-id", str(env.get("SLURM_JOB_ID", run_id)),
        "--max-restarts", "0",
        "--log-dir", str(Path(run_dir) / "torchrun"),
        "--tee", "3",
        "--local-ranks-filter", "0",
        "-m", "adagc_repro.worker", str(run_dir),
    ]


def _first_slurm_host(env: Mapping[str, str]) -> str:
    """First host of a Slurm node list such as `gpu[003-004,010]` or `a,b` (no scontrol needed)."""
    nodelist = env["SLURM_JOB_NODELIST"]
    head, _, rest = nodelist.partition("[")
    if not rest:
        return head.split(",")[0]
    first = rest.split(",")[0].split("-")[0].rstrip("]")
    return head + first
