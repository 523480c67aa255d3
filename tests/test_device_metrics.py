"""Per-step device scalars queued without a sync and read back in order, one row per step."""

from __future__ import annotations

import math

import torch

from adagc_repro.metrics.device_metrics import DeviceMetrics


def test_flush_returns_every_step_in_order_and_empties_the_queue():
    buffer = DeviceMetrics()
    for step in range(1, 4):
        buffer.add({"step": step, "lr": 0.1 * step},
                   {"loss": torch.tensor(float(step) / 3), "flag": torch.tensor(step == 2), "nan": torch.tensor(math.nan)})
    assert len(buffer) == 3
    rows = buffer.flush()
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert [row["loss"] for row in rows] == [torch.tensor(s / 3).item() for s in (1.0, 2.0, 3.0)]  # fp32 values, exactly
    assert [row["flag"] for row in rows] == [0.0, 1.0, 0.0]
    assert all(math.isnan(row["nan"]) and row["lr"] == 0.1 * row["step"] for row in rows)
    assert buffer.flush() == [] and len(buffer) == 0


def test_steps_with_different_keys_keep_their_own_values():
    buffer = DeviceMetrics()
    buffer.add({"step": 1}, {"a": torch.tensor(1.0)})
    buffer.add({"step": 2}, {"a": torch.tensor(2.0), "b": torch.tensor(3.0, dtype=torch.float64)})
    buffer.add({"step": 3}, {})
    assert buffer.flush() == [{"step": 1, "a": 1.0}, {"step": 2, "a": 2.0, "b": 3.0}, {"step": 3}]
