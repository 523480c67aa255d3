"""Qwen3 dense decoder (GQA, per-head q/k RMSNorm), from `transformers.Qwen3Config`."""

from __future__ import annotations

from adagc_repro.models import MODELS
from adagc_repro.models.rope_decoder import rope_decoder_config


@MODELS.register("qwen3")
def qwen3(
    *,
    vocab_size: int = 151936,
    hidden_size: int = 2048,
    intermediate_size: int = 6144,
    num_hidden_layers: int = 28,
    num_attention_heads: int = 16,
    num_key_value_heads: int = 8,
    head_dim: int = 128,
    max_position_embeddings: int = 40960,
    rope_theta: float = 1e6,
    rms_norm_eps: float = 1e-6,
    tie_word_embeddings: bool = True,
    initializer_range: float = 0.02,
):
    """Defaults are Qwen3-1.7B."""
    return rope_decoder_config("Qwen3Config", locals(), attention_bias=False, use_sliding_window=False)
