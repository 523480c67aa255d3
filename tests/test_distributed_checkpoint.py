"""A DCP checkpoint written by 2 FSDP2 ranks loads into one plain process (another world size):
parameters and AdamW state equal the full tensors the ranks held."""

from __future__ import annotations

from pathlib import Path

import torch
from distributed_helpers import run_on_ranks, tiny_llama


def _parts():
    from adagc_repro.clipping import build_clipper

    model = tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, optimizer, build_clipper("adagc", warmup_steps=0)


def _train_one_step_and_save(rank, world_size, folder):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from adagc_repro.checkpoint import DistributedCheckpointer

    model, _, clipper = _parts()
    mesh = init_device_mesh("cpu", (world_size,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = torch.randint(0, 257, (2, 16), generator=torch.Generator().manual_seed(rank))
    model(input_ids=batch, labels=batch).loss.backward()
    clipper(model)
    optimizer.step()
    stateful = {"model": model, "optimizer": optimizer, "clipper": clipper}
    DistributedCheckpointer(folder).save(1, stateful, train_state={"step": 1})
    full_model, full_optim = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    if rank == 0:
        torch.save({"model": full_model, "optimizer": full_optim}, Path(folder) / "expected.pt")


def test_a_two_rank_fsdp2_checkpoint_loads_into_one_process(tmp_path):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    from adagc_repro.checkpoint import DistributedCheckpointer

    run_on_ranks(_train_one_step_and_save, 2, str(tmp_path))
    model, optimizer, clipper = _parts()
    before = [p.detach().clone() for p in model.parameters()]
    extras = DistributedCheckpointer(tmp_path).load_latest({"model": model, "optimizer": optimizer, "clipper": clipper})
    assert extras["train_state"] == {"step": 1} and extras["step"] == 1
    expected = torch.load(tmp_path / "expected.pt", weights_only=True)
    got_model, got_optim = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    assert got_model.keys() == expected["model"].keys()
    for name, value in expected["model"].items():
        torch.testing.assert_close(got_model[name], value, rtol=0, atol=0, msg=name)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)), "nothing was loaded"
    for name, state in expected["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(got_optim["state"][name][key], state[key], rtol=0, atol=0)
