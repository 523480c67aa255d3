"""Activation checkpointing through the model's own switch: same loss and gradients, fewer kept blocks."""

from __future__ import annotations

import pytest
import torch
from distributed_helpers import tiny_llama

from adagc_repro.distributed.parallelize import apply_activation_checkpointing, decoder_blocks, parallelize
from adagc_repro.errors import ConfigError


def _loss_and_grads(mode: str):
    model = tiny_llama()
    model.train()
    apply_activation_checkpointing(model, mode)
    batch = torch.randint(0, 257, (2, 16), generator=torch.Generator().manual_seed(0))
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    return model, loss.detach(), [p.grad for p in model.parameters()]


@pytest.mark.parametrize("mode,checkpointed", [("full", [True, True]), ("selective", [True, False])])
def test_activation_checkpointing_keeps_loss_and_gradients(mode, checkpointed):
    _, loss, grads = _loss_and_grads("none")
    model, loss_ac, grads_ac = _loss_and_grads(mode)
    assert [block.gradient_checkpointing for block in decoder_blocks(model)] == checkpointed
    assert torch.equal(loss, loss_ac)
    for g, h in zip(grads, grads_ac, strict=True):
        torch.testing.assert_close(h, g, rtol=0, atol=1e-7)


def test_one_process_keeps_the_model_unwrapped():
    model = tiny_llama()
    runner = parallelize(model, strategy="fsdp2", activation_checkpointing="none", compile=False, precision="fp32",
                         device=torch.device("cpu"))
    assert runner is model and not any(block.gradient_checkpointing for block in decoder_blocks(model))


def test_unknown_activation_checkpointing_names_the_key():
    with pytest.raises(ConfigError, match="train.activation_checkpointing"):
        apply_activation_checkpointing(tiny_llama(), "most")
