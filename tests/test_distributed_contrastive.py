"""CLIP's contrastive loss over 2 gloo processes (CPU, fp32): the mean of the ranks' losses is the
single-process full-batch loss and, after DDP or FSDP2 average the gradients, so are the gradients;
a DDP run trains to the single-process losses. The loss is not batch-decomposable, so without the
embedding gather the halves' mean differs and these tests fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_overrides
from distributed_helpers import run_on_ranks

CLIP_TINY = {**yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "model" / "clip_tiny.yaml").read_text()),
             "max_position_embeddings": 8}
GLOBAL_BATCH = 8
STEPS = 2


def _tiny_clip_and_batches():
    """The same model and global micro-batches on every rank."""
    from adagc_repro.data.image_text import build_image_text_data
    from adagc_repro.models import build_model

    data = build_image_text_data({"source": "synthetic_shapes", "num_train": GLOBAL_BATCH * STEPS, "num_val": 8,
                                  "seed": 0}, image_size=32, max_text_len=8)
    torch.manual_seed(0)
    model = build_model(CLIP_TINY, data.vocab_size)
    batches = [data.train.batch(range(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH)) for step in range(STEPS)]
    return model, batches


def _rank_share(batch, rank, world_size):
    share = GLOBAL_BATCH // world_size
    return {key: value[rank * share:(rank + 1) * share] for key, value in batch.items()}


def _full_grad(grad):
    return grad.full_tensor() if hasattr(grad, "full_tensor") else grad


def _ddp_and_fsdp2_match_full_batch(rank, world_size):
    for strategy in ("ddp", "fsdp2"):
        _parallel_matches_full_batch(rank, world_size, strategy)


def _parallel_matches_full_batch(rank, world_size, strategy):
    """SGD steps of the parallel model against the same steps on the full batch in this process."""
    from adagc_repro.distributed.collectives import mean_across_ranks
    from adagc_repro.distributed.parallelize import parallelize
    from adagc_repro.models import forward_loss
    from adagc_repro.tasks.contrastive import ContrastiveTask

    reference, batches = _tiny_clip_and_batches()
    model, _ = _tiny_clip_and_batches()
    runner = parallelize(model, strategy=strategy, activation_checkpointing="none", compile=False, precision="fp32",
                         device=torch.device("cpu"))
    task = ContrastiveTask(text_len=8)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (reference, model)]
    for step, batch in enumerate(batches):
        expected, expected_extras = forward_loss(reference, batch)
        expected.backward()
        local, extras = task.forward_loss(runner, _rank_share(batch, rank, world_size))
        local.backward()
        halves_mean = mean_across_ranks(forward_loss(reference, _rank_share(batch, rank, world_size))[0].detach())
        assert abs(halves_mean.item() - expected.item()) > 0.05, "the test cannot tell a missing gather"
        torch.testing.assert_close(mean_across_ranks(local.detach()), expected.detach(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(extras["logit_scale"].reshape(()), expected_extras["logit_scale"])
        for (name, p), q in zip(reference.named_parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(_full_grad(q.grad).reshape(p.shape), p.grad, rtol=1e-5, atol=1e-6,
                                       msg=lambda m, n=name, s=step: f"{strategy} step {s} {n}: {m}")
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad()


def test_ddp_and_fsdp2_on_two_ranks_give_the_full_batch_loss_and_gradients():
    run_on_ranks(_ddp_and_fsdp2_match_full_batch, 2)


def _run(folder: Path, *extra: str) -> list[dict]:
    """A 4-step tiny CLIP run at a learning rate that moves the weights; its metric rows."""
    overrides = tiny_overrides(folder, "model=clip_tiny", "data=shapes", "data.num_train=64", "data.num_val=16",
                               "train.batch_size=8", "schedule.warmup_steps=0", "optim.lr=3e-3", "clip=adagc",
                               "clip.warmup_steps=2", *extra)
    done = subprocess.run([sys.executable, "-m", "adagc_repro.cli", "run", *overrides], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run_dir,) = (folder / "results" / "runs").iterdir()
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # the loss and gradient test above covers the gather under DDP and FSDP2 in seconds
def test_ddp_run_trains_to_the_single_process_losses(tmp_path):
    single = _run(tmp_path / "single")
    ddp = _run(tmp_path / "ddp", "parallel=ddp", "parallel.nproc_per_node=2")
    assert len(ddp) == len(single) == 5  # 4 steps and the final validation
    for got, expected in zip(ddp, single, strict=True):
        for key in ("loss", "grad_norm", "train/logit_scale", "val/loss"):
            assert abs(got.get(key, 0.0) - expected.get(key, 0.0)) <= 1e-5, (key, got, expected)


def test_an_fsdp2_clip_export_loads_with_the_model_familys_scalar_logit_scale(tmp_path):
    """FSDP2 needs CLIP's 0-d logit_scale as [1]; the exported model must have it 0-d again."""
    import torch.distributed as dist
    from transformers import CLIPModel

    from adagc_repro.checkpoint import DistributedCheckpointer
    from adagc_repro.data.image_text import build_image_text_data
    from adagc_repro.distributed.parallelize import decoder_blocks, shard_fsdp2

    data = build_image_text_data({"source": "synthetic_shapes", "num_train": 8, "num_val": 8, "seed": 0},
                                 image_size=32, max_text_len=8)
    model, _ = _tiny_clip_and_batches()
    with torch.no_grad():
        model.logit_scale.fill_(1.25)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        shard_fsdp2(model, decoder_blocks(model), param_dtype=torch.float32, device=torch.device("cpu"))
        assert model.logit_scale.shape == (1,)
        final = DistributedCheckpointer(tmp_path).export_final(model, data.tokenizer)
    finally:
        dist.destroy_process_group()
    loaded = CLIPModel.from_pretrained(str(final))
    assert loaded.logit_scale.shape == () and loaded.logit_scale.item() == 1.25
