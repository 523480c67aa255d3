"""Norm phase shared by every clipper: per-tensor L2 norms in fp32 and the global norm, on the device.

One `torch._foreach_norm` call gives every tensor's norm; the global norm is the L2 norm of that vector,
exactly as `torch.nn.utils.clip_grad_norm_` computes it. Nothing here reads a value back to the host.

Sharded gradients (DTensor, e.g. FSDP2 `Shard(0)`): by default each norm is the norm of the *full*
logical tensor, from ONE all-reduce of the vector of squared local-shard norms (the global norm is
derived from it locally, no second collective). With `shard=True` the norms are those of the local
shards, so no per-tensor collective is issued; only the squared global norm, one scalar, is reduced.

Every collective goes through `_all_reduce`, which `count_collectives()` tallies (calls and bytes),
so the loop can log what the clipping phase communicated.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class CommCount:
    calls: int = 0
    bytes: int = 0


_counters: list[CommCount] = []


@contextlib.contextmanager
def count_collectives():
    """Tally the collectives issued inside the block: `with count_collectives() as comm: ...`."""
    counter = CommCount()
    _counters.append(counter)
    try:
        yield counter
    finally:
        _counters.remove(counter)


def _all_reduce(tensor: Tensor, group) -> None:
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM, group=group)
    for counter in _counters:
        counter.calls += 1
        counter.bytes += tensor.numel() * tensor.element_size()


def shard_group(params: list[Tensor]):
    """The process group DTensor parameters are sharded over (1-D mesh, Shard placements only)."""
    param = params[0]
    if any(not placement.is_shard() for placement in param.placements) or param.device_mesh.ndim != 1:
        raise ValueError(f"clipping supports 1-D sharded meshes (FSDP2); got placements {param.placements}")
    return param.device_mesh.get_group()


def _dtensor_type():
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def local_tensors(grads: list[Tensor]) -> list[Tensor]:
    """The tensors to scale in place: a DTensor gradient is scaled through its local shard."""
    return [g.to_local() for g in grads]


def is_sharded(params: list[Tensor]) -> bool:
    """True when the parameters (hence their gradients) are DTensors; decided once per binding."""
    dtensor = _dtensor_type()
    if dtensor is None:
        return False
    flags = {isinstance(p, dtensor) for p in params}
    if len(flags) > 1:
        raise ValueError("parameters mix DTensor and plain tensors; clip them with separate clippers")
    return flags.pop() if flags else False


def grad_norms(grads: list[Tensor], *, group=None, shard: bool = False,
               params: list[Tensor] = ()) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-tensor L2 norms (fp32 vector) and the global L2 norm (fp32 0-d tensor) of `grads`, and the
    full L2 norms of `params` (None when none are asked for). With a `group`, `grads` and `params` are
    the local shards of tensors sharded over it, and one all-reduce carries all their squared norms."""
    norms = _norms(grads)
    if group is None:
        return norms, torch.linalg.vector_norm(norms), _norms(list(params)) if params else None
    param_squares = _norms(list(params)).square() if params else norms.new_zeros(0)
    if shard:
        squares = torch.cat([norms.square().sum().reshape(1), param_squares])
        _all_reduce(squares, group)
        return norms, squares[0].sqrt(), squares[1:].sqrt() if params else None
    squares = torch.cat([norms.square(), param_squares])
    _all_reduce(squares, group)
    norms = squares[: len(grads)].sqrt()
    return norms, torch.linalg.vector_norm(norms), squares[len(grads):].sqrt() if params else None


def _norms(tensors: list[Tensor]) -> Tensor:
    return torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float32))


def scale_(grads: list[Tensor], coefs: Tensor) -> None:
    """Multiply gradients in place: by one 0-d coefficient, or by one coefficient per tensor."""
    if coefs.dim() == 0:
        torch._foreach_mul_(grads, coefs)
    else:
        torch._foreach_mul_(grads, list(coefs.unbind(0)))


def mean_over_ranks(values: Tensor) -> Tensor:
    """Average a per-rank vector over the default process group (itself when not distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    world = torch.distributed.get_world_size()
    if world > 1:
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
        values /= world
    return values
