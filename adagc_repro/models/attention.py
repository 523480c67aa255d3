"""Causal-LM attention: torch's SDPA with the causal mask left implicit, under torch.compile too.

While torch.compile traces a model, transformers cannot check position ids for packed documents or the
padding mask for padding, so it builds a dense [batch, 1, T, T] mask and calls SDPA with it: the kernel
computes all T² scores and masks half of them. Eagerly, with no padding and no packing, it passes
`is_causal=True` instead and the kernel skips the masked blocks.

`sdpa_causal` is transformers' SDPA attention that drops the mask when the caller says the batch is
plainly causal (`implicit_causal=True`, a forward keyword that transformers hands down to the
attention function): no attention mask and no position ids, so one unpadded sequence per row, and the
mask transformers builds is exactly the lower triangle that `is_causal=True` computes. The loss
(`models.forward_loss`) says so for such batches; every other call keeps transformers' mask. The mask
builder is transformers' own `sdpa_mask`; under compile the unused mask is dropped from the graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CAUSAL_SDPA = "sdpa_causal"


def causal_sdpa() -> str:
    """Register the implementation with transformers (idempotent) and return its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(CAUSAL_SDPA, sdpa_attention)
    AttentionMaskInterface.register(CAUSAL_SDPA, sdpa_mask)
    return CAUSAL_SDPA


def sdpa_attention(module, query, key, value, attention_mask, *, implicit_causal: bool = False, **kwargs: Any):
    """transformers' SDPA attention; with `implicit_causal`, no mask (SDPA's `is_causal=True`)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, None if implicit_causal else attention_mask, **kwargs)


def causal_kwargs(model, batch: Mapping[str, Any]) -> dict[str, bool]:
    """The forward keyword that lets `sdpa_causal` skip the mask, for batches that are plainly causal."""
    plain = batch.get("attention_mask") is None and batch.get("position_ids") is None
    uses_it = getattr(model.config, "_attn_implementation", None) == CAUSAL_SDPA
    return {"implicit_causal": True} if plain and uses_it else {}
