"""Per-step scalars kept on the device and read back every few steps in one transfer.

The training loop adds each step's tensors (loss, gradient norms, clipping statistics, skip flags)
without reading them; `flush()` at a logging boundary copies every pending step to the host at once,
so a step costs no host sync and metrics.jsonl still gets one row per step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class DeviceMetrics:
    """A queue of steps: host-side values (known without a sync) plus 0-d device tensors."""

    def __init__(self) -> None:
        self._steps: list[tuple[dict[str, Any], tuple[str, ...], Tensor]] = []

    def __len__(self) -> int:
        return len(self._steps)

    def add(self, host: dict[str, Any], device: dict[str, Tensor]) -> None:
        """Queue one step: `host` values as they are, `device` scalars stacked into one fp64 vector."""
        target = next(iter(device.values())).device if device else torch.device("cpu")
        stacked = torch.stack([torch.as_tensor(v).detach().to(target, torch.float64).reshape(()) for v in device.values()]) \
            if device else torch.zeros(0, dtype=torch.float64)
        self._steps.append((host, tuple(device), stacked))

    def flush(self) -> list[dict[str, Any]]:
        """Every queued step as a dict of Python numbers (NaN/Inf kept), in order; empties the queue."""
        if not self._steps:
            return []
        devices = {values.device for *_, values in self._steps}
        vectors = [values if len(devices) == 1 else values.cpu() for *_, values in self._steps]
        flat = torch.cat(vectors).tolist()  # the one device→host transfer
        rows, offset = [], 0
        for host, keys, _ in self._steps:
            rows.append({**host, **dict(zip(keys, flat[offset:offset + len(keys)], strict=True))})
            offset += len(keys)
        self._steps.clear()
        return rows
