"""`sdpa_causal`: under torch.compile an unpadded, unpacked batch reaches SDPA with no mask and
`is_causal=True` (transformers alone builds a dense T×T mask while tracing), every other batch keeps
transformers' mask, and the loss and gradients equal the eager ones."""

from __future__ import annotations

import pytest
import torch
import transformers.integrations.sdpa_attention as sdpa_module

from adagc_repro.models import build_model, forward_loss
from adagc_repro.models.attention import CAUSAL_SDPA

SMALL = {  # each family at a size that traces in seconds
    "llama": {"name": "t", "family": "llama", "vocab_size": 128, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 64},
    "mixtral": {"name": "t", "family": "mixtral", "vocab_size": 128, "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, "num_local_experts": 2,
                "num_experts_per_tok": 1, "max_position_embeddings": 64},
    "qwen3": {"name": "t", "family": "qwen3", "vocab_size": 128, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
              "max_position_embeddings": 64},
    "gpt2": {"name": "t", "family": "gpt2", "vocab_size": 128, "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 2, "max_position_embeddings": 64},
}


@pytest.fixture
def sdpa_calls(monkeypatch):
    """(mask shape or None, is_causal) of every SDPA call transformers makes."""
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        calls.append((None if attn_mask is None else tuple(attn_mask.shape), is_causal))
        return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(sdpa_module.torch.nn.functional, "scaled_dot_product_attention", spy)
    torch._dynamo.reset()
    yield calls
    torch._dynamo.reset()


@pytest.mark.parametrize("family", sorted(SMALL))
def test_compiled_plain_batch_runs_sdpa_with_an_implicit_causal_mask(family, sdpa_calls):
    torch.manual_seed(0)
    model = build_model(SMALL[family])
    assert model.config._attn_implementation == CAUSAL_SDPA
    batch = {"input_ids": torch.randint(0, 128, (2, 16))}
    eager_loss = forward_loss(model, batch)[0]
    eager_grads = torch.autograd.grad(eager_loss, list(model.parameters()))
    sdpa_calls.clear()
    compiled_loss = forward_loss(torch.compile(model, backend="eager"), batch)[0]  # Dynamo traces the model
    assert sdpa_calls and set(sdpa_calls) == {(None, True)}  # no dense mask, the kernel's causal path
    compiled_grads = torch.autograd.grad(compiled_loss, list(model.parameters()))
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-6, atol=1e-6)
    for compiled, eager in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


def test_packed_documents_and_direct_calls_keep_the_mask(sdpa_calls):
    torch.manual_seed(0)
    eager_model = build_model(SMALL["llama"])
    model = torch.compile(eager_model, backend="eager")
    ids = torch.randint(0, 128, (2, 16))
    positions = torch.cat([torch.arange(8), torch.arange(8)]).expand(2, -1)  # two documents per row
    packed = {"input_ids": ids, "position_ids": positions}
    compiled_loss = forward_loss(model, packed)[0]
    assert sdpa_calls and all(mask == (2, 1, 16, 16) and not causal for mask, causal in sdpa_calls)
    eager_loss = forward_loss(eager_model, packed)[0]  # transformers' block-diagonal mask, built eagerly
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-6, atol=1e-6)
    whole_rows = forward_loss(eager_model, {"input_ids": ids})[0]
    assert not torch.allclose(eager_loss, whole_rows)  # the documents really are masked from each other
    sdpa_calls.clear()
    model(input_ids=ids, labels=ids)  # no `implicit_causal`: transformers' own dense mask while compiling
    assert sdpa_calls and all(mask == (2, 1, 16, 16) and not causal for mask, causal in sdpa_calls)


def test_padded_batch_keeps_the_mask_and_masks_the_padding(sdpa_calls):
    torch.manual_seed(0)
    model = build_model(SMALL["llama"])
    ids = torch.randint(0, 128, (2, 16))
    padding = torch.ones(2, 16, dtype=torch.long)
    padding[0, :5] = 0
    logits = model(input_ids=ids, attention_mask=padding, implicit_causal=False).logits
    assert sdpa_calls and all(mask == (2, 1, 16, 16) and not causal for mask, causal in sdpa_calls)
    # row 0's unpadded tokens see only themselves: the same logits as that row alone, without its padding
    alone = model(input_ids=ids[:1, 5:]).logits
    torch.testing.assert_close(logits[0, 5:], alone[0], rtol=1e-5, atol=1e-5)
    sdpa_calls.clear()
    forward_loss(model, {"input_ids": ids, "attention_mask": padding})  # the loss passes no implicit_causal
    assert sdpa_calls and all(mask == (2, 1, 16, 16) for mask, _ in sdpa_calls)


def test_held_out_perplexity_of_a_compiled_model_uses_the_implicit_mask(sdpa_calls):
    from adagc_repro.eval.perplexity import evaluate_blocks

    model = build_model(SMALL["llama"])
    blocks = torch.randint(0, 128, (4, 16))
    eager = evaluate_blocks(model, blocks, batch_size=2, device="cpu")
    sdpa_calls.clear()
    compiled = evaluate_blocks(torch.compile(model, backend="eager"), blocks, batch_size=2, device="cpu")
    assert sdpa_calls and set(sdpa_calls) == {(None, True)}
    assert compiled["loss"] == pytest.approx(eager["loss"], rel=1e-6)
