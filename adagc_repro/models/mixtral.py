"""Mixtral-style sparse MoE decoder, from `transformers.MixtralConfig`.

The router load-balancing loss is always computed (`output_router_logits`) and added to the LM loss
with `router_aux_loss_coef`; `forward_loss` reports it as `router_aux_loss`. Experts are stored as
3-D tensors (experts × out × in); an expert that receives no tokens in a step gets a zero slice.
"""

from __future__ import annotations

from adagc_repro.models import MODELS
from adagc_repro.models.rope_decoder import rope_decoder_config


@MODELS.register("mixtral")
def mixtral(
    *,
    vocab_size: int = 32000,
    hidden_size: int = 4096,
    intermediate_size: int = 14336,
    num_hidden_layers: int = 32,
    num_attention_heads: int = 32,
    num_key_value_heads: int | None = 8,
    num_local_experts: int = 8,
    num_experts_per_tok: int = 2,
    router_aux_loss_coef: float = 0.01,
    router_jitter_noise: float = 0.0,
    max_position_embeddings: int = 4096,
    rope_theta: float = 1e6,
    rms_norm_eps: float = 1e-5,
    tie_word_embeddings: bool = False,
    initializer_range: float = 0.02,
):
    """Defaults are Mixtral 8×7B; presets override the shape."""
    return rope_decoder_config("MixtralConfig", locals(), output_router_logits=True, sliding_window=None)
