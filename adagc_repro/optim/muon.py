"""Muon for hidden 2-D weight matrices plus AdamW for everything else, as one optimizer.

`torch.optim.Muon` takes 2-D parameters only. Hidden matrices (attention and MLP projections, the MoE
router) go to Muon, and so do stacked MoE experts (experts × out × in, `models.layout.stacked_experts`):
`StackedMuon` orthogonalises each expert's slice as its own matrix, with its own slice of the momentum
buffer and its own shape-adjusted lr. Token/position embeddings, the LM head, norm gains, biases and other
non-2-D tensors (Conv2d patch embeddings) go to AdamW, the standard hybrid.

`MuonWithAdamW` is a `torch.optim.Optimizer` whose `param_groups` and `state` are those of the two
inner optimizers, shared by reference, so one `step()`, `zero_grad()`, LR schedule (every group carries
its own `lr`, and a LambdaLR multiplier keeps their ratio) and `state_dict()` cover both. Gradient
clipping happens before `step()`, on all parameters, before this split.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz, muon  # the algorithm, not a copy

from adagc_repro.models.layout import output_head, stacked_experts
from adagc_repro.optim.stepping import closure_loss

MUON, ADAMW = "muon", "adamw"


def lookup_table_params(model: nn.Module) -> set[int]:
    """ids of the embedding tables and of the output head (tied or not)."""
    ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = output_head(model)
    if head is not None:
        ids.add(id(head))
    return ids


def muon_param_names(model: nn.Module) -> list[str]:
    """Names of the trainable parameters Muon updates: 2-D matrices that are neither an embedding nor
    the head, and stacked experts."""
    tables = lookup_table_params(model)
    experts = stacked_experts(model)
    return [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and ((p.ndim == 2 and id(p) not in tables) or name in experts)
    ]


def _expert_slices(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each expert of a 3-D stack as one matrix. A sharded (DTensor) stack gives the experts of its local
    shard: FSDP2 shards along the experts dim, so each is a whole matrix and needs no communication."""
    return [view for t in tensors for view in (_local_stack(t).unbind(0) if t.ndim == 3 else (t,))]


def _local_stack(stack: torch.Tensor) -> torch.Tensor:
    from adagc_repro.distributed.sharding import local_rows

    if getattr(stack, "placements", None) is None:
        return stack
    local_rows(stack)  # raises unless sharded along dim 0, the experts dim: whole experts on each rank
    return stack.to_local()


class StackedMuon(torch.optim.Muon):
    """`torch.optim.Muon` that also takes 3-D stacked experts: every expert slice is one Muon matrix.

    torch's constructor accepts 2-D parameters only, so 3-D groups join through `add_param_group`;
    each step hands Muon's own update the per-expert views of parameter, gradient and momentum buffer.
    A matrix FSDP2 shards by rows is orthogonalised whole on one rank (`_sharded_updates`), not through
    DTensor's matrix products, which would communicate in every Newton–Schulz iteration.
    """

    def __init__(self, param_groups: list[dict[str, Any]], **kwargs: Any):
        is_stacked = [any(p.ndim == 3 for p in g["params"]) for g in param_groups]
        super().__init__([g for g, stacked in zip(param_groups, is_stacked, strict=True) if not stacked], **kwargs)
        for group, stacked in zip(param_groups, is_stacked, strict=True):
            if stacked:
                self.add_param_group(group)

    def _init_group(self, group, params_with_grad, grads, muon_momentum_bufs) -> bool:
        has_complex = super()._init_group(group, params_with_grad, grads, muon_momentum_bufs)
        for tensors in (params_with_grad, grads, muon_momentum_bufs):
            tensors[:] = _expert_slices(tensors)
        return has_complex

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            params, grads, buffers = [], [], []
            self._init_group(group, params, grads, buffers)
            sharded = [getattr(p, "placements", None) is not None for p in params]
            whole = [[t for t, split in zip(tensors, sharded, strict=True) if not split]
                     for tensors in (params, grads, buffers)]
            hyperparameters = _hyperparameters(group)
            muon(*whole, has_complex=False, **hyperparameters)
            _sharded_updates([(param, grad, buffer) for param, grad, buffer, split
                              in zip(params, grads, buffers, sharded, strict=True) if split], **hyperparameters)
        return loss


def _hyperparameters(group: dict[str, Any]) -> dict[str, Any]:
    keys = ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "ns_steps", "eps", "adjust_lr_fn")
    return {key: group[key] for key in keys}


def _sharded_updates(sharded: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], *, lr, weight_decay, momentum,
                     nesterov, ns_coefficients, ns_steps, eps, adjust_lr_fn) -> None:
    """torch's `_single_tensor_muon` for row-sharded (param, grad, momentum buffer) matrices, the work split
    over the ranks: the momentum and the update stay sharded; each matrix's Newton–Schulz runs on one
    rank (`newton_schulz_owners`), which gathers its bf16 input (the rows padded to torch.chunk's size),
    orthogonalises it and scatters every rank its rows back, so the step equals the dense one."""
    import torch.distributed as dist

    from adagc_repro.distributed.sharding import local_rows

    if not sharded:
        return
    mesh = sharded[0][0].device_mesh
    group, world, me = mesh.get_group(), mesh.size(), mesh.get_local_rank()
    inputs = []
    for param, grad, buffer in sharded:
        buffer.lerp_(grad, 1 - momentum)
        update = grad.lerp(buffer, momentum) if nesterov else buffer
        inputs.append(_padded(update.to_local().bfloat16(), -(-param.shape[0] // world)))
    owners = newton_schulz_owners([param.shape for param, _, _ in sharded], world)
    pieces = [[torch.empty_like(rows) for _ in range(world)] if owner == me else None
              for rows, owner in zip(inputs, owners, strict=True)]
    _wait([dist.gather(rows, gathered, group_dst=owner, group=group, async_op=True)
           for rows, gathered, owner in zip(inputs, pieces, owners, strict=True)])
    results = [torch.empty_like(rows) for rows in inputs]
    _wait([dist.scatter(result, _orthogonal_pieces(gathered, param.shape[0], ns_coefficients, ns_steps, eps),
                        group_src=owner, group=group, async_op=True)
           for result, gathered, owner, (param, _, _) in zip(results, pieces, owners, sharded, strict=True)])
    for (param, _, _), result in zip(sharded, results, strict=True):
        param.mul_(1 - lr * weight_decay)
        param.to_local().add_(result[:len(local_rows(param))], alpha=-_adjust_lr(lr, adjust_lr_fn, param.shape))


def newton_schulz_owners(shapes: list[tuple[int, int]], world: int) -> list[int]:
    """The rank that orthogonalises each matrix: largest first, each to the least loaded rank (ties: the
    lowest), a matrix's load being its iteration's FLOPs (rows · cols · min(rows, cols)). A pure function
    of the shapes, so every rank computes the same assignment."""
    loads, owners = [0] * world, [0] * len(shapes)
    for i in sorted(range(len(shapes)), key=lambda i: (-_newton_schulz_cost(shapes[i]), i)):
        owners[i] = min(range(world), key=lambda rank: (loads[rank], rank))
        loads[owners[i]] += _newton_schulz_cost(shapes[i])
    return owners


def _newton_schulz_cost(shape: tuple[int, int]) -> int:
    rows, cols = shape
    return rows * cols * min(rows, cols)


def _padded(rows: torch.Tensor, count: int) -> torch.Tensor:
    """`rows` with zero rows appended up to `count` (collectives take equal shapes from every rank)."""
    return torch.cat([rows, rows.new_zeros(count - rows.shape[0], *rows.shape[1:])]) if rows.shape[0] < count else rows


def _orthogonal_pieces(gathered: list[torch.Tensor] | None, rows: int, ns_coefficients, ns_steps, eps):
    """On the matrix's owner: Newton–Schulz of the whole matrix (the first `rows` of the padded pieces, in
    rank order: torch.chunk leaves only trailing shards short), cut back into padded pieces; None elsewhere."""
    if gathered is None:
        return None
    whole = _zeropower_via_newtonschulz(torch.cat(gathered)[:rows], ns_coefficients, ns_steps, eps)
    # contiguous: for a matrix taller than wide the iteration returns a transposed view, whose row
    # blocks a collective would read in storage order
    return list(_padded(whole.contiguous(), sum(piece.shape[0] for piece in gathered)).chunk(len(gathered)))


def _wait(works) -> None:
    for work in works:
        work.wait()


class MuonWithAdamW(torch.optim.Optimizer):
    def __init__(
        self,
        muon_groups: list[dict[str, Any]],
        adamw_groups: list[dict[str, Any]],
        muon_kwargs: dict[str, Any],
        adamw_kwargs: dict[str, Any],
    ):
        for groups, kind in ((muon_groups, MUON), (adamw_groups, ADAMW)):
            for group in groups:
                group["optimizer"] = kind
        # Inner optimizers fill their defaults into the group dicts; this optimizer then owns the same dicts.
        self.muon = StackedMuon(muon_groups, **muon_kwargs) if muon_groups else None
        self.adamw = torch.optim.AdamW(adamw_groups, **adamw_kwargs) if adamw_groups else None
        super().__init__(muon_groups + adamw_groups, {})
        self._share_with_inner()

    def _inner(self) -> list[tuple[str, torch.optim.Optimizer]]:
        return [(kind, opt) for kind, opt in ((MUON, self.muon), (ADAMW, self.adamw)) if opt is not None]

    def _share_with_inner(self) -> None:
        for kind, opt in self._inner():
            opt.param_groups = [g for g in self.param_groups if g["optimizer"] == kind]
            opt.state = self.state

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for _, opt in self._inner():
            opt.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Loading replaces the group dicts and the state; point the inner optimizers at the new ones.
        super().load_state_dict(state_dict)
        self._share_with_inner()
