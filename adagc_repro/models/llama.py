"""Llama-2 style decoder (RMSNorm, SwiGLU, RoPE), from `transformers.LlamaConfig`."""

from __future__ import annotations

from adagc_repro.models import MODELS
from adagc_repro.models.rope_decoder import rope_decoder_config


@MODELS.register("llama")
def llama(
    *,
    vocab_size: int = 32000,
    hidden_size: int = 4096,
    intermediate_size: int = 11008,
    num_hidden_layers: int = 32,
    num_attention_heads: int = 32,
    num_key_value_heads: int | None = None,
    max_position_embeddings: int = 4096,
    rope_theta: float = 10000.0,
    rms_norm_eps: float = 1e-5,
    tie_word_embeddings: bool = False,
    initializer_range: float = 0.02,
):
    """Defaults are Llama-2 7B; presets in conf/model override the shape."""
    return rope_decoder_config("LlamaConfig", locals(), attention_bias=False, mlp_bias=False)
