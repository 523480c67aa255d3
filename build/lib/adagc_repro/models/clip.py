"""CLIP (ViT image tower + causal text tower, symmetric contrastive loss), from `transformers.CLIPConfig`.

The text tower pools at the first `eos_token_id` of each caption, so the tokenizer that feeds the model
must use the same id (the synthetic caption tokenizer in `adagc_repro.data.image_text` does, for the
`clip_tiny` preset; the defaults are the OpenAI CLIP tokenizer's ids).
"""

from __future__ import annotations

from adagc_repro.models import MODELS


@MODELS.register("clip")
def clip(
    *,
    vocab_size: int = 49408,
    max_position_embeddings: int = 77,
    text_hidden_size: int = 512,
    text_intermediate_size: int = 2048,
    text_num_hidden_layers: int = 12,
    text_num_attention_heads: int = 8,
    image_size: int = 224,
    patch_size: int = 16,
    num_channels: int = 3,
    vision_hidden_size: int = 768,
    vision_intermediate_size: int = 3072,
    vision_num_hidden_layers: int = 12,
    vision_num_attention_heads: int = 12,
    projection_dim: int = 512,
    logit_scale_init_value: float = 2.6592,
    pad_token_id: int = 1,
    bos_token_id: int = 49406,
    eos_token_id: int = 49407,
    initializer_range: float = 0.02,
):
    """Defaults are CLIP ViT-B/16."""
    from transformers import CLIPConfig

    text_config = {
        "vocab_size": vocab_size,
        "max_position_embeddings": max_position_embeddings,
        "hidden_size": text_hidden_size,
        "intermediate_size": text_intermediate_size,
        "num_hidden_layers": text_num_hidden_layers,
        "num_attention_heads": text_num_attention_heads,
        "projection_dim": projection_dim,
        "pad_token_id": pad_token_id,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "initializer_range": initializer_range,
    }
    vision_config = {
        "image_size": image_size,
        "patch_size": patch_size,
        "num_channels": num_channels,
        "hidden_size": vision_hidden_size,
        "intermediate_size": vision_intermediate_size,
        "num_hidden_layers": vision_num_hidden_layers,
        "num_attention_heads": vision_num_attention_heads,
        "projection_dim": projection_dim,
        "initializer_range": initializer_range,
    }
    return CLIPConfig(
        text_config=text_config,
        vision_config=vision_config,
        projection_dim=projection_dim,
        logit_scale_init_value=logit_scale_init_value,
    )
