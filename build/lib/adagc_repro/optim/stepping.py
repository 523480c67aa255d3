"""Shared bookkeeping for the foreach optimizers: per-parameter step counts, batched by value."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch


def params_by_step(
    optimizer: torch.optim.Optimizer, group: dict[str, Any], init_state: Callable[[torch.Tensor], dict]
) -> dict[int, list[torch.Tensor]]:
    """Advance the step count of every parameter with a gradient; return them grouped by new count.

    Counts live on the CPU (as in torch.optim.Adam), so reading them costs no device sync; parameters
    that skipped steps (no gradient) keep their own bias correction.
    """
    batches: dict[int, list[torch.Tensor]] = defaultdict(list)
    for param in group["params"]:
        if param.grad is None:
            continue
        state = optimizer.state[param]
        if not state:
            state.update(init_state(param), step=torch.tensor(0.0))
        state["step"] += 1
        batches[int(state["step"].item())].append(param)
    return batches


def states(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], key: str) -> list[torch.Tensor]:
    return [optimizer.state[p][key] for p in params]


def per_tensor(values: torch.Tensor) -> list[torch.Tensor]:
    """A 1-D tensor of per-tensor factors as 0-d tensors, for foreach ops without a host sync."""
    return list(values.unbind())
