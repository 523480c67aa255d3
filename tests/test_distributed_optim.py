"""Every optimizer steps FSDP2-sharded parameters as it steps the dense model, on 2 gloo processes:
element-wise rules shard trivially; StableAdamW's and ClippyAdamW's per-tensor factors must be those of
the whole tensor; Muon's Newton–Schulz iteration must see whole matrices, bit for bit those of the dense
model (a sharded 2-D matrix, each expert of a sharded stack), each computed on one rank only. pytorch-optimizer's SPAM and Stable-SPAM refuse sharded parameters."""

from __future__ import annotations

import pytest
import torch
from distributed_helpers import run_on_ranks, tiny_mixtral
from test_distributed_clipping import MODELS, _shard_model, _step_grads

STEPS = 3
UPDATE_RTOL = 1e-4  # relative error of a step's update, sharded against dense


def _optimizer(name: str, model):
    from adagc_repro.optim import build_optimizer

    return build_optimizer({"name": name, "lr": 1e-2}, model)


def _every_optimizer_matches_dense(rank, world_size, names, family):
    from torch.distributed.tensor import distribute_tensor

    failures = {}
    for name in names:
        dense, sharded = MODELS[family](), MODELS[family]()
        mesh = _shard_model(sharded, world_size)
        try:
            dense_opt, sharded_opt = _optimizer(name, dense), _optimizer(name, sharded)
            for step in range(STEPS):
                for p, q, g in zip(dense.parameters(), sharded.parameters(), _step_grads(dense, step), strict=True):
                    p.grad = g.clone()
                    q.grad = distribute_tensor(g.clone(), mesh, q.placements)
                before = [p.detach().clone() for p in dense.parameters()]
                dense_opt.step()
                sharded_opt.step()
                for (pname, p), q, start in zip(dense.named_parameters(), sharded.parameters(), before, strict=True):
                    want, got = p.detach() - start, q.detach().full_tensor() - start
                    error = float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want).clamp_min(1e-12))
                    assert error <= UPDATE_RTOL, f"step {step} {pname}: update off by {error:.2e} (relative)"
                    q.data.copy_(distribute_tensor(p.detach().clone(), mesh, q.placements))  # the next step starts equal
        except Exception as exc:  # noqa: BLE001 - one optimizer's failure must not hide the others'
            failures[name] = f"{type(exc).__name__}: {str(exc)[:300]}"
    assert not failures, failures


def _newton_schulz_calls_per_rank(rank, world_size):
    import torch.distributed as dist
    from torch.distributed.tensor import distribute_tensor

    from adagc_repro.optim import muon

    model = tiny_mixtral()
    mesh = _shard_model(model, world_size)
    optimizer = _optimizer("muon", model)
    torch.manual_seed(1)  # the same gradients on every rank, each keeping its shard
    for p in model.parameters():
        p.grad = distribute_tensor(torch.randn(p.shape), mesh, p.placements)
    named = dict(model.named_parameters())
    matrices = [name for name in muon.muon_param_names(model) if named[name].ndim == 2]  # sharded by rows
    calls = []
    original = muon._zeropower_via_newtonschulz
    muon._zeropower_via_newtonschulz = lambda update, *args: calls.append(update.shape) or original(update, *args)
    try:
        optimizer.step()
    finally:
        muon._zeropower_via_newtonschulz = original
    owners = muon.newton_schulz_owners([named[name].shape for name in matrices], world_size)
    assert sorted(calls) == sorted(named[name].shape for name, owner in zip(matrices, owners, strict=True)
                                 if owner == rank)
    total = torch.tensor(len(calls))
    dist.all_reduce(total)
    assert int(total) == len(matrices) > world_size  # each once over all ranks, not once on every rank


def _unsharded_only_refuse(rank, world_size, names):
    from adagc_repro.errors import ConfigError

    model = tiny_mixtral()
    _shard_model(model, world_size)
    for name in names:
        with pytest.raises(ConfigError, match=f"optim.name: {name} .*cannot step FSDP2-sharded parameters"):
            _optimizer(name, model)


@pytest.mark.parametrize("family", sorted(MODELS))  # llama: uneven shards, matrices taller than wide
def test_every_optimizer_steps_sharded_parameters_as_dense_ones(family):
    from adagc_repro.optim import OPTIMIZERS
    from adagc_repro.optim.optimizers import UNSHARDED_ONLY

    run_on_ranks(_every_optimizer_matches_dense, 2, [n for n in OPTIMIZERS.names() if n not in UNSHARDED_ONLY], family)


def test_muon_orthogonalises_each_sharded_matrix_on_one_rank():
    run_on_ranks(_newton_schulz_calls_per_rank, 2)


def test_newton_schulz_work_is_balanced_over_the_ranks_by_its_flops():
    from adagc_repro.optim.muon import _newton_schulz_cost, newton_schulz_owners

    # a 7B layer's seven matrices (q, k, v, o, gate, up, down) in parameter order, 32 layers, on 7 ranks:
    # taking them round-robin would give three ranks every gate, up and down matrix (2.7x a q's work)
    layer = [(4096, 4096)] * 4 + [(11008, 4096), (11008, 4096), (4096, 11008)]
    shapes = layer * 32
    for world in (2, 7, 8):
        owners = newton_schulz_owners(shapes, world)
        loads = [sum(_newton_schulz_cost(s) for s, o in zip(shapes, owners, strict=True) if o == rank) for rank in range(world)]
        assert max(loads) - min(loads) <= max(map(_newton_schulz_cost, shapes))  # within one matrix's work
        assert max(loads) / min(loads) < 1.05
    assert newton_schulz_owners([(8, 8)] * 3, 2) == [0, 1, 0]  # equal matrices: round-robin, lowest rank first


def test_spam_and_stable_spam_refuse_sharded_parameters_in_one_line():
    from adagc_repro.optim.optimizers import UNSHARDED_ONLY

    run_on_ranks(_unsharded_only_refuse, 2, list(UNSHARDED_ONLY))


def test_spam_with_fsdp2_is_refused_when_the_config_is_checked():
    from typer.testing import CliRunner

    from adagc_repro.cli import app

    result = CliRunner().invoke(app, ["show", "optim=stable_spam", "parallel=fsdp2"])
    assert result.exit_code == 2
    assert "optim.name: stable_spam (pytorch-optimizer's) cannot step FSDP2-sharded parameters" in result.output
    assert CliRunner().invoke(app, ["show", "optim=stable_spam", "parallel=ddp"]).exit_code == 0
