"""The config of a Llama-like decoder (Llama, Mixtral, Qwen3) from its family builder's arguments."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def rope_decoder_config(config_class: str, builder_args: Mapping[str, Any], **fixed: Any):
    """`transformers.<config_class>` with the builder's keywords as fields, plus `fixed` ones.

    Builders pass `locals()` as their first statement, so every keyword they declare is forwarded.
    `rope_theta` becomes default RoPE `rope_parameters`; an unset (None or 0) `num_key_value_heads`
    means one KV head per attention head. No KV cache: these models are trained, not sampled.
    """
    import transformers

    fields = dict(builder_args)
    fields["rope_parameters"] = {"rope_type": "default", "rope_theta": fields.pop("rope_theta")}
    fields["num_key_value_heads"] = fields["num_key_value_heads"] or fields["num_attention_heads"]
    return getattr(transformers, config_class)(**fields, **fixed, use_cache=False)
