"""Causal language modelling: next-token loss, held-out perplexity, model FLOPs per token."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adagc_repro.tasks import forward_loss


@dataclass
class LanguageModelingTask:
    seq_len: int
    name: str = "lm"
    runs_evaluations: bool = True

    @property
    def sample_len(self) -> int:
        return self.seq_len

    def forward_loss(self, model, batch):
        return forward_loss(model, batch)

    def flops_per_token(self, model) -> float | None:
        from adagc_repro.models import flops_per_token

        return flops_per_token(model, self.seq_len)

    @torch.no_grad()
    def validate(self, model, val_set, *, count: int, micro_batch: int, device) -> dict[str, float | None]:
        from adagc_repro.eval.perplexity import evaluate_blocks

        result = evaluate_blocks(model, val_set.blocks(count), batch_size=micro_batch, device=device)
        return {"val/loss": result["loss"], "val/ppl": result["ppl"]}
