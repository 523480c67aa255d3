"""CLIP-style contrastive image–text training: symmetric InfoNCE over the global batch.

The loss is not a mean over samples (every pair in the batch is a negative of every other), so under
distributed training each rank gathers every rank's image and text embeddings with a differentiable
all_gather and scores its own rows against all of them. The mean of the ranks' losses is then the
full-batch loss, and since the gather's backward sums every rank's contribution to each embedding, the
gradients DDP/FSDP2 average over ranks are the full-batch gradients (tests/test_distributed_contrastive.py).
One process computes the loss as transformers does. Validation runs the whole validation batches on
every rank, so it needs no gather.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adagc_repro.distributed import collectives
from adagc_repro.tasks import forward_loss


@dataclass
class ContrastiveTask:
    text_len: int
    name: str = "contrastive"
    runs_evaluations: bool = False

    @property
    def sample_len(self) -> int:
        return self.text_len

    def forward_loss(self, model, batch):
        if collectives.world_size() == 1:
            return forward_loss(model, batch)
        return global_batch_loss(model, batch)

    def flops_per_token(self, model) -> float | None:
        return None

    @torch.no_grad()
    def validate(self, model, val_set, *, count: int, micro_batch: int, device) -> dict[str, float | None]:
        was_training = model.training
        model.eval()
        losses = []
        for start in range(0, count, micro_batch):
            batch = {k: v.to(device) for k, v in val_set.batch(range(start, min(start + micro_batch, count))).items()}
            losses.append(float(forward_loss(model, batch)[0]))  # the whole batch on every rank
        model.train(was_training)
        return {"val/loss": sum(losses) / len(losses), "val/ppl": None}


def global_batch_loss(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This rank's share of the global-batch loss: its texts against every rank's images and its images
    against every rank's texts. The batch is this rank's contiguous share of the global micro-batch."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                pixel_values=batch["pixel_values"])
    texts, images = out.text_embeds, out.image_embeds  # L2-normalised
    scale = model.logit_scale.exp()
    first = collectives.rank() * len(texts)
    positives = torch.arange(first, first + len(texts), device=texts.device)  # own pairs in gathered order
    text_loss = torch.nn.functional.cross_entropy(scale * texts @ _gather(images).T, positives)
    image_loss = torch.nn.functional.cross_entropy(scale * images @ _gather(texts).T, positives)
    return (text_loss + image_loss) / 2, {"logit_scale": scale.detach()}


def _gather(local: torch.Tensor) -> torch.Tensor:
    """Every rank's rows in rank order. Differentiable: the backward sums each rank's gradient for these
    rows (as torch.distributed.nn.functional.all_gather does, which now warns that it is deprecated)."""
    import torch.distributed as dist
    from torch.distributed._functional_collectives import all_gather_single

    return all_gather_single(local, 0, dist.group.WORLD)
