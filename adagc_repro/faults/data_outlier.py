"""data_outlier: replace the batches of chosen steps with outlier data.

Kinds: `repeat` (every position one token), `uniform` (uniformly random tokens), `rare_run` (a run of
a rare token, by default the last vocabulary id, i.e. the BPE's last merge, inside the natural text).
Rows, tokens and offsets come from a generator seeded by (run seed, step, micro-batch, rank): each
rank replaces its own batch deterministically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from adagc_repro.errors import ConfigError
from adagc_repro.faults import FAULTS
from adagc_repro.faults.base import Trigger, seeded_generator

KINDS = ("repeat", "uniform", "rare_run")


@FAULTS.register("data_outlier")
@dataclass
class DataOutlier(Trigger):
    kind: str = "repeat"
    fraction: float = 1.0  # share of each micro-batch's sequences replaced (at least one)
    token: int | None = None  # repeat: None draws one by seed; rare_run: None is the last vocabulary id
    run_length: int = 0  # rare_run: tokens in the run (0: half the sequence)
    name: ClassVar[str] = "data_outlier"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind not in KINDS:
            raise ConfigError("fault.data_outlier.kind", f"unknown kind '{self.kind}'", KINDS)
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError("fault.data_outlier.fraction", f"must be in (0, 1], got {self.fraction}")

    def observe_from(self) -> int:
        return self.step + self.duration  # the first clean batch after the outliers

    def on_batch(self, batch, step, micro, context):
        if not self.active(step):
            return batch
        ids = batch["input_ids"].clone()
        generator = seeded_generator(context.seed, self.name, step, micro, context.rank)
        rows = torch.randperm(ids.shape[0], generator=generator)[: max(1, round(self.fraction * ids.shape[0]))]
        ids[rows] = self._outliers(ids[rows], context.vocab_size, generator)
        return {**batch, "input_ids": ids, **({"labels": ids} if "labels" in batch else {})}

    def _outliers(self, rows: torch.Tensor, vocab_size: int, generator: torch.Generator) -> torch.Tensor:
        if self.token is not None and not 0 <= self.token < vocab_size:
            raise ConfigError("fault.data_outlier.token", f"{self.token} is outside the vocabulary", f"0-{vocab_size - 1}")
        if self.kind == "uniform":
            return torch.randint(vocab_size, rows.shape, generator=generator, dtype=rows.dtype)
        if self.kind == "repeat":
            token = self.token if self.token is not None else int(torch.randint(vocab_size, (1,), generator=generator))
            return torch.full_like(rows, token)
        length = min(rows.shape[1], self.run_length or rows.shape[1] // 2)
        start = int(torch.randint(rows.shape[1] - length + 1, (1,), generator=generator))
        outliers = rows.clone()
        outliers[:, start : start + length] = vocab_size - 1 if self.token is None else self.token
        return outliers

    def event(self, step: int) -> dict[str, Any]:
        return {"kind": self.kind, "fraction": self.fraction}
