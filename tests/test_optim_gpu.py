"""GPU check: each optimizer without a third-party dependency trains a small Llama on CUDA under bf16
autocast; AdamW is fused there."""

from __future__ import annotations

import pytest
import torch

from adagc_repro.models import build_model, forward_loss
from adagc_repro.optim import build_optimizer

pytestmark = pytest.mark.gpu

SMALL = {
    "name": "s",
    "family": "llama",
    "vocab_size": 512,
    "hidden_size": 128,
    "intermediate_size": 352,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 128,
}
NATIVE = ["adamw", "lion", "muon", "stableadamw", "clippy_adamw"]  # no third-party package needed


def batch(device: str) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 512, (8, 64), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids.to(device)}


@pytest.mark.parametrize("name", NATIVE)
def test_optimizer_trains_on_cuda_with_bf16_autocast(name):
    torch.manual_seed(0)
    model = build_model(SMALL, device="cuda")
    optimizer = build_optimizer({"name": name}, model, device_type="cuda")
    if name == "adamw":
        assert optimizer.defaults["fused"] is True
    data, losses = batch("cuda"), []
    for _ in range(30):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = forward_loss(model, data)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0, (name, losses[0], losses[-1])

