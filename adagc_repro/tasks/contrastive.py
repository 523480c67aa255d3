"""CLIP-style contrastive image–text training: symmetric InfoNCE over the batch.

The loss is not a mean over samples (every pair in the batch is a negative of every other), so it
cannot be split over ranks without gathering the embeddings; until that gather exists, this task trains
in one process.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adagc_repro.errors import ConfigError
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
        return forward_loss(model, batch)

    def flops_per_token(self, model) -> float | None:
        return None

    @torch.no_grad()
    def validate(self, model, val_set, *, count: int, micro_batch: int, device) -> dict[str, float | None]:
        was_training = model.training
        model.eval()
        losses = []
        for start in range(0, count, micro_batch):
            batch = {k: v.to(device) for k, v in val_set.batch(range(start, min(start + micro_batch, count))).items()}
            losses.append(float(self.forward_loss(model, batch)[0]))
        model.train(was_training)
        return {"val/loss": sum(losses) / len(losses), "val/ppl": None}

    def check_world_size(self, world_size: int) -> None:
        if world_size > 1:
            raise ConfigError("parallel.name", "contrastive (CLIP) models train in one process", ["none"])
