"""Clipping FSDP2-sharded gradients on 2 gloo processes: every clipper gives the clipped gradients and
per-tensor norms it gives on the dense model, with one all-reduce per step; AdaGC-Shard clips each
local shard with its own threshold and no per-tensor collective."""

from __future__ import annotations

import inspect

import pytest
import torch
from distributed_helpers import run_on_ranks, tiny_llama, tiny_mixtral

# Short warm-ups so three steps reach each clipper's adaptive rule.
SHORT_WARMUP = {"warmup_steps": 1, "total_steps": 3}
STEPS = 3


def _clipper(name: str, **extra):
    from adagc_repro.clipping import CLIPPERS, build_clipper

    accepted = inspect.signature(CLIPPERS.get(name)).parameters
    return build_clipper(name, **{k: v for k, v in {**SHORT_WARMUP, **extra}.items() if k in accepted})


def _step_grads(model, step: int) -> list[torch.Tensor]:
    """The same gradients on every rank: seeded by step, with an outlier step to trigger clipping."""
    generator = torch.Generator().manual_seed(100 + step)
    scale = 10.0 if step == STEPS - 1 else 1.0
    return [torch.randn(p.shape, generator=generator) * scale * (1 + i % 3) for i, p in enumerate(model.parameters())]


def _shard_model(model, world_size):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world_size,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return mesh


MODELS = {"llama": tiny_llama, "mixtral": tiny_mixtral}


def _every_clipper_matches_dense(rank, world_size, names, family="llama"):
    dense, sharded = MODELS[family](), MODELS[family]()
    mesh = _shard_model(sharded, world_size)
    failures = {}
    for name in names:
        try:
            _check_clipper(name, dense, sharded, mesh)
        except AssertionError as exc:
            failures[name] = str(exc).splitlines()[0]
    assert not failures, failures


def _check_clipper(name, dense, sharded, mesh):
    from torch.distributed.tensor import distribute_tensor

    from adagc_repro.clipping.norms import count_collectives

    dense_clipper, sharded_clipper = _clipper(name), _clipper(name)
    for step in range(STEPS):
        grads = _step_grads(dense, step)
        for p, q, g in zip(dense.parameters(), sharded.parameters(), grads, strict=True):
            p.grad = g.clone()
            q.grad = distribute_tensor(g.clone(), mesh, q.placements)
        loss = torch.tensor(2.0 + step)
        expected = dense_clipper(dense, loss=loss)
        with count_collectives() as comm:
            got = sharded_clipper(sharded, loss=loss)
        assert comm.calls == 1, f"{name}: {comm.calls} collectives in one clipping step"
        torch.testing.assert_close(got.tensor_norms, expected.tensor_norms, rtol=1e-5, atol=1e-6, msg=name)
        assert bool(got.skipped) == bool(expected.skipped), name
        for (pname, p), q in zip(dense.named_parameters(), sharded.parameters(), strict=True):
            torch.testing.assert_close(q.grad.full_tensor(), p.grad, rtol=1e-5, atol=1e-6,
                                       msg=lambda m, n=name, s=step, pn=pname: f"{n} step {s} {pn}: {m}")


def _dense_mode_clippers() -> list[str]:
    from adagc_repro.clipping import CLIPPERS

    names = [n for n in CLIPPERS.names() if "shard" not in inspect.signature(CLIPPERS.get(n)).parameters] + ["adagc"]
    return sorted(set(names))


def test_every_clipper_clips_sharded_gradients_as_dense_ones():
    run_on_ranks(_every_clipper_matches_dense, 2, _dense_mode_clippers())


def test_sharded_expert_stacks_are_clipped_per_expert_as_on_the_dense_model():
    """Each rank holds some experts of a stack (uneven: 2 and 1 of 3): per-expert norms, thresholds and
    coefficients still match the dense model's, which binds one tensor per expert."""
    run_on_ranks(_every_clipper_matches_dense, 2, _dense_mode_clippers(), "mixtral")


def _adagc_shard_clips_each_shard(rank, world_size):
    """Step 1 (no warm-up) sets γ = each local shard's norm. Step 2 triples the rows rank 0 holds and
    keeps rank 1's: rank 0's shards are clipped to lambda_rel·γ, rank 1's pass untouched. The dense
    path would scale both halves by one full-tensor coefficient."""
    from torch.distributed.tensor import distribute_tensor

    from adagc_repro.clipping.norms import count_collectives

    model = tiny_llama()
    mesh = _shard_model(model, world_size)
    clipper = _clipper("adagc", warmup_steps=0, shard=True, lambda_rel=1.04)
    params = list(model.parameters())
    first = _step_grads(model, 0)
    second = []
    for g in first:
        rows = torch.ones(g.shape[0])
        rows[: (g.shape[0] + 1) // 2] = 3.0  # the rows of the first torch.chunk: rank 0's shard
        second.append(g * rows.reshape(-1, *([1] * (g.dim() - 1))))
    for grads in (first, second):
        for p, g in zip(params, grads, strict=True):
            p.grad = distribute_tensor(g.clone(), mesh, p.placements)
        local_before = [p.grad.to_local().clone() for p in params]
        with count_collectives() as comm:
            stats = clipper(model)
        assert comm.calls == 1 and comm.bytes == 4, "AdaGC-Shard reduces only the global norm (one fp32 scalar)"
    local_first = [distribute_tensor(g, mesh, p.placements).to_local() for p, g in zip(params, first, strict=True)]
    for p, before, gamma_source in zip(params, local_before, local_first, strict=True):
        after = p.grad.to_local()
        if before.numel() == 0:
            continue
        if rank == 1:
            assert torch.equal(after, before), "rank 1's shards did not grow and must not be clipped"
        else:
            gamma = torch.linalg.vector_norm(gamma_source)
            torch.testing.assert_close(torch.linalg.vector_norm(after), 1.04 * gamma, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(stats.tensor_norms, torch.stack([torch.linalg.vector_norm(b) for b in local_before]))


def test_adagc_shard_clips_each_local_shard_with_its_own_threshold():
    run_on_ranks(_adagc_shard_clips_each_shard, 2)


@pytest.mark.parametrize("shard", [False, True])
def test_dense_gradients_need_no_collective(shard):
    from adagc_repro.clipping.norms import count_collectives

    model = tiny_llama()
    for p, g in zip(model.parameters(), _step_grads(model, 0), strict=True):
        p.grad = g
    with count_collectives() as comm:
        _clipper("adagc", shard=shard)(model)
    assert comm.calls == 0
