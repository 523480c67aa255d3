"""Under torch.compile with bf16 autocast, as the loop trains on CUDA, the language-model loss never
materialises the logits in float32: transformers' loss upcasts them (`logits.float()`), and Inductor
fuses that cast into the cross-entropy's reductions, forward and backward. This is what a fused linear
cross-entropy kernel would buy for memory (Liger's fails to trace under compile with torch 2.11)."""

from __future__ import annotations

import re

import pytest
import torch
from torch._inductor.utils import run_and_get_code

from adagc_repro.models import build_model, forward_loss

VOCAB, TOKENS = 4096, 2 * 64


def _buffers(device: str) -> list[tuple[int, ...]]:
    """(shape..., dtype) of every 2-D buffer the compiled forward and backward allocate."""
    torch.manual_seed(0)
    model = build_model({"name": "t", "family": "llama", "vocab_size": VOCAB, "hidden_size": 64,
                         "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
                         "max_position_embeddings": 64}, device=torch.device(device))
    batch = {"input_ids": torch.randint(0, VOCAB, (2, 64), device=device)}
    compiled = torch.compile(model)

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = forward_loss(compiled, batch)[0]
        loss.backward()

    torch._dynamo.reset()
    _, code = run_and_get_code(step)
    allocations = r"empty_strided_\w+\(\((\d+), (\d+)\), \(\d+, \d+\), torch\.(\w+)\)"
    return [(int(rows), int(cols), dtype) for rows, cols, dtype in re.findall(allocations, "\n".join(code))]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_compiled_bf16_loss_keeps_the_logits_out_of_float32(device):
    buffers = _buffers(device)
    assert (TOKENS, VOCAB, "bfloat16") in buffers  # the logits, as the bf16 matmul writes them
    assert not [b for b in buffers if b[:2] == (TOKENS, VOCAB) and b[2] == "float32"]
