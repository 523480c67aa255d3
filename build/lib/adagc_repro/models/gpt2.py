"""GPT-2 (pre-LayerNorm, GELU MLP, learned positions, tied head), from `transformers.GPT2Config`.

AdaGC's official GPT-2 345M script runs Megatron with RoPE; transformers' GPT-2 has learned absolute
positions instead (2048 × 1024 extra embedding parameters, which carry no FLOPs).
"""

from __future__ import annotations

from adagc_repro.models import MODELS


@MODELS.register("gpt2")
def gpt2(
    *,
    vocab_size: int = 50257,
    hidden_size: int = 1024,
    num_hidden_layers: int = 24,
    num_attention_heads: int = 16,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 2048,
    layer_norm_epsilon: float = 1e-5,
    dropout: float = 0.0,
    tie_word_embeddings: bool = True,
    initializer_range: float = 0.02,
):
    """Defaults are the 345M shape; `intermediate_size` defaults to 4 × hidden."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size,
        n_embd=hidden_size,
        n_layer=num_hidden_layers,
        n_head=num_attention_heads,
        n_inner=intermediate_size,
        n_positions=max_position_embeddings,
        layer_norm_epsilon=layer_norm_epsilon,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        tie_word_embeddings=tie_word_embeddings,
        initializer_range=initializer_range,
        use_cache=False,
    )
