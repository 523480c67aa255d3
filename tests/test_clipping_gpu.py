"""On CUDA: every clipper runs a step without a host sync and agrees with its CPU result. Needs only torch."""

from __future__ import annotations

import pytest
import torch
from test_clipping_helpers import CONFIGS, build, grads_of, named_params, set_grads, step_grads

pytestmark = pytest.mark.gpu


def _on(device: str):
    return [(name, torch.nn.Parameter(p.detach().to(device))) for name, p in named_params()]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_step_makes_no_host_sync_and_matches_cpu(name):
    cuda, cpu = _on("cuda"), _on("cpu")
    on_gpu, on_cpu = build(name), build(name)
    loss = torch.tensor(2.0, device="cuda")
    for step in range(8):
        grads = step_grads(cpu, step)
        set_grads(cpu, grads)
        set_grads(cuda, [g.to("cuda") for g in grads])
        on_cpu(cpu, loss=loss.cpu())
        if step == 0:  # binding and state creation may copy small index tensors to the device once
            stats = on_gpu(cuda, loss=loss)
        else:
            torch.cuda.set_sync_debug_mode("error")
            try:
                stats = on_gpu(cuda, loss=loss)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        assert not bool(stats.skipped) or stats.skip_reason == "spike"
        for got, want in zip(grads_of(cuda), grads_of(cpu), strict=True):
            torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-6)
