"""What a model learns from a batch: the task interface that keeps model-family branches out of the loop.

A task knows its tokens per sample (for throughput), its FLOPs per token (for MFU, None when not
defined), its validation pass and whether downstream evaluations apply. The loss itself comes from
`adagc_repro.models.forward_loss`, looked up at call time, except where ranks must combine their
batches first (the contrastive task under distributed training).
"""

from __future__ import annotations

from typing import Any, Protocol


class Task(Protocol):
    name: str
    sample_len: int  # tokens per sample, counted for tokens/s
    runs_evaluations: bool  # WikiText / lm-eval apply to this task

    def forward_loss(self, model, batch) -> tuple[Any, dict[str, Any]]: ...

    def flops_per_token(self, model) -> float | None: ...

    def validate(self, model, val_set, *, count: int, micro_batch: int, device) -> dict[str, float | None]: ...


def build_task(cfg) -> Task:
    from adagc_repro.data import is_contrastive

    if is_contrastive(cfg.model):
        from adagc_repro.tasks.contrastive import ContrastiveTask

        return ContrastiveTask(text_len=int(cfg.model.max_position_embeddings))
    from adagc_repro.tasks.lm import LanguageModelingTask

    return LanguageModelingTask(seq_len=int(cfg.train.seq_len))


def forward_loss(model, batch):
    from adagc_repro import models

    return models.forward_loss(model, batch)
