"""Parameter counts and training FLOPs per token (for MFU), on real or meta-device models."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights once); works on the meta device."""
    return sum(p.numel() for p in model.parameters())


def _embedding_table_params(model: nn.Module) -> int:
    """Parameters of lookup tables (token and learned position embeddings): no matmul, no FLOPs."""
    from torch import nn

    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Embedding) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += module.weight.numel()
    return total


def _tied_head_params(model: nn.Module) -> int:
    """A tied LM head still runs a vocab × hidden matmul, so it is counted once as a matmul weight."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and embed is not None and head.weight is embed.weight:
        return head.weight.numel()
    return 0


def _inactive_expert_params(model: nn.Module) -> int:
    """Expert weights a token does not use: a fraction 1 − k/E of every tensor under `.experts.`."""
    config = model.config
    num_experts = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
    if not num_experts:
        return 0
    active_fraction = config.num_experts_per_tok / num_experts
    expert_params = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
    return round(expert_params * (1.0 - active_fraction))


def _attention_flops(num_layers: int, num_heads: int, head_dim: int, seq_len: int) -> int:
    """12·L·H·Q·T: QKᵀ and AV (2 matmuls × 2 FLOPs per MAC) for forward plus twice that for backward."""
    return 12 * num_layers * num_heads * head_dim * seq_len


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def active_matmul_params(model: nn.Module) -> int:
    """N in 6·N: parameters minus embedding tables, plus a tied head, minus unused experts."""
    return (
        count_parameters(model)
        - _embedding_table_params(model)
        + _tied_head_params(model)
        - _inactive_expert_params(model)
    )


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token, PaLM appendix B / torchtitan convention:

        6 · N_active_nonembedding + 12 · L · H · Q · T

    N counts matmul weights: all parameters minus embedding lookup tables (token and learned position
    embeddings), plus the LM head when it is tied to the input embedding; for MoE only the k of E
    experts a token is routed to count. L layers, H attention heads, Q head dim, T = seq_len.
    Llama-3 8B at T = 8192 gives ≈ 57.9 GFLOP/token, torchtitan's figure.

    For CLIP a "token" is one image–text pair: the sum over both towers of 6·N·tokens + 12·L·H·Q·tokens²
    (vision tokens = patches + class token, text tokens = seq_len) plus the two projections.
    """
    config = model.config
    if config.model_type == "clip":
        return float(_clip_flops_per_pair(model, seq_len))
    n_active = active_matmul_params(model)
    attention = _attention_flops(
        config.num_hidden_layers, config.num_attention_heads, _head_dim(config), seq_len
    )
    return float(6 * n_active + attention)


def _clip_flops_per_pair(model: nn.Module, text_len: int) -> int:
    vision_cfg, text_cfg = model.config.vision_config, model.config.text_config
    vision_tokens = (vision_cfg.image_size // vision_cfg.patch_size) ** 2 + 1
    total = 0
    for tower, cfg, tokens in (
        (model.vision_model, vision_cfg, vision_tokens),
        (model.text_model, text_cfg, text_len),
    ):
        n_matmul = count_parameters(tower) - _embedding_table_params(tower)
        total += 6 * n_matmul * tokens
        total += (
            _attention_flops(cfg.num_hidden_layers, cfg.num_attention_heads, _head_dim(cfg), tokens) * tokens
        )
    projections = model.visual_projection.weight.numel() + model.text_projection.weight.numel()
    return total + 6 * projections
