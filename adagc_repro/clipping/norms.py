"""Norm phase shared by every clipper: per-tensor L2 norms in fp32 and the global norm, on the device.

One `torch._foreach_norm` call gives every tensor's norm; the global norm is the L2 norm of that vector,
exactly as `torch.nn.utils.clip_grad_norm_` computes it. Nothing here reads a value back to the host.

Sharded gradients (DTensor, e.g. FSDP2): by default each norm is the norm of the *full* logical tensor
(one collective for the whole vector). With `shard=True` the norms are those of the local shards, so
no per-tensor collective is issued; only the global norm, a single scalar, is still reduced.
"""

from __future__ import annotations

import torch
from torch import Tensor


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


def grad_norms(grads: list[Tensor], *, sharded: bool = False, shard: bool = False) -> tuple[Tensor, Tensor]:
    """Per-tensor L2 norms (fp32 vector) and the global L2 norm (fp32 0-d tensor) of `grads`."""
    norms = torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32))
    if not sharded:
        return norms, torch.linalg.vector_norm(norms)
    total = torch.linalg.vector_norm(norms).full_tensor()
    if shard:
        return torch.stack(torch._foreach_norm(local_tensors(grads), 2, dtype=torch.float32)), total
    return norms.full_tensor(), total


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
