"""Qwen3 dense decoder (GQA, per-head q/k RMSNorm), from `transformers.Qwen3Config`."""

from __future__ import annotations

from adagc_repro.models import MODELS


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
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        rms_norm_eps=rms_norm_eps,
        tie_word_embeddings=tie_word_embeddings,
        initializer_range=initializer_range,
        attention_bias=False,
        use_sliding_window=False,
        use_cache=False,
    )
