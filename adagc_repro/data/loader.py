"""Which blocks each rank trains on at each step, and a loader that fetches them ahead of the loop.

The order is a pure function. `micro_batch` is global (over all ranks): global micro-batch m of
optimizer step s (0-based) is samples [(s·accum + m)·micro_batch, (s·accum + m + 1)·micro_batch) of
the run, and rank r reads the r-th contiguous 1/world_size of it, so every micro-batch holds the same
samples whatever the number of processes (a contrastive loss gathered over ranks sees the same
groups). Sample i is block perm_e[i mod N] of epoch e = i div N, a fresh permutation seeded by
(seed, e). Resuming at step s needs nothing but s.
"""

from __future__ import annotations

import queue
import threading
from functools import lru_cache
from typing import Any

import numpy as np


@lru_cache(maxsize=2)  # the current epoch and the next: a paper-scale permutation is ~70 MB
def epoch_permutation(seed: int, epoch: int, num_blocks: int) -> np.ndarray:
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_blocks, generator=generator).numpy()


def sample_blocks(first: int, count: int, *, seed: int, num_blocks: int) -> list[int]:
    """Block indices of samples [first, first + count) of the run."""
    blocks = []
    for sample in range(first, first + count):
        epoch, offset = divmod(sample, num_blocks)
        blocks.append(int(epoch_permutation(seed, epoch, num_blocks)[offset]))
    return blocks


def rank_micro_batches(seed: int, step: int, rank: int, world_size: int, *, num_blocks: int, micro_batch: int,
                       accum: int) -> list[list[int]]:
    """Block indices of `rank`'s share of the `accum` global micro-batches of optimizer step `step` (0-based)."""
    share = micro_batch // world_size
    return [sample_blocks((step * accum + m) * micro_batch + rank * share, share, seed=seed, num_blocks=num_blocks)
            for m in range(accum)]


class StepLoader:
    """Iterator over optimizer steps from `start_step`: each item is the rank's list of `accum`
    micro-batches (dicts of tensors) on `device`. A background thread gathers the next `depth` steps
    into pinned memory, so the loop only issues non-blocking copies. `prepare(batch, step, micro)`
    (1-based step) may replace a host batch first: the fault seam for outlier data."""

    def __init__(self, dataset, *, seed: int, rank: int, world_size: int, micro_batch: int, accum: int,
                 start_step: int, device, depth: int = 2, prepare=None):
        self.dataset, self.device, self.prepare = dataset, device, prepare
        self._plan = {"seed": seed, "rank": rank, "world_size": world_size, "num_blocks": len(dataset),
                      "micro_batch": micro_batch, "accum": accum}
        self._pin = getattr(device, "type", str(device)).startswith("cuda")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(start_step,), daemon=True)
        self._thread.start()

    def __iter__(self):
        return self

    def __next__(self) -> list[dict[str, Any]]:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return [{key: value.to(self.device, non_blocking=True) for key, value in batch.items()} for batch in item]

    def _produce(self, step: int) -> None:
        plan = dict(self._plan)
        seed, rank, world_size = plan.pop("seed"), plan.pop("rank"), plan.pop("world_size")
        try:
            while not self._stop.is_set():
                micro = [self._gather(blocks, step + 1, m)
                         for m, blocks in enumerate(rank_micro_batches(seed, step, rank, world_size, **plan))]
                while not self._stop.is_set():
                    try:
                        self._queue.put(micro, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                step += 1
        except BaseException as exc:  # handed to the loop, which re-raises it
            self._queue.put(exc)

    def _gather(self, blocks: list[int], step: int, micro: int) -> dict[str, Any]:
        batch = self.dataset.batch(blocks)
        if self.prepare is not None:
            batch = self.prepare(batch, step, micro)
        return {key: value.pin_memory() for key, value in batch.items()} if self._pin else batch

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
