"""Model zoo: transformers architectures built from config classes with random initialisation.

A model config node looks like `{name: llama_tiny, family: llama, hidden_size: 256, ...}`. `family`
selects a builder in `MODELS`; every other key except `name` and the `seq_len` hint is a keyword of that
builder, so a typo fails with `ConfigError("model.<key>")`. Builders return a transformers config; the
model classes are imported only when a model is built, which keeps this package cheap to import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from adagc_repro.errors import ConfigError
from adagc_repro.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

MODELS = Registry("model family", "model")

# Families register themselves on import (the modules import no torch or transformers at top level).
from adagc_repro.models import clip as _clip  # noqa: E402,F401
from adagc_repro.models import gpt2 as _gpt2  # noqa: E402,F401
from adagc_repro.models import llama as _llama  # noqa: E402,F401
from adagc_repro.models import mixtral as _mixtral  # noqa: E402,F401
from adagc_repro.models import qwen3 as _qwen3  # noqa: E402,F401
from adagc_repro.models.accounting import count_parameters, flops_per_token  # noqa: E402
from adagc_repro.models.attention import causal_kwargs, causal_sdpa  # noqa: E402
from adagc_repro.models.presets import describe_presets  # noqa: E402

CONTRASTIVE_FAMILIES = frozenset({"clip"})
NOT_BUILDER_KWARGS = ("name", "family", "seq_len")  # `seq_len` is a hint for FLOP estimates only

__all__ = [
    "MODELS",
    "build_model",
    "count_parameters",
    "describe_presets",
    "flops_per_token",
    "forward_loss",
    "model_kind",
]


def plain_mapping(node: Mapping[str, Any]) -> dict[str, Any]:
    """A plain dict (lists instead of ListConfig) from a dict or an OmegaConf node."""
    if type(node).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    return dict(node)


def _family(model_cfg: Mapping[str, Any]) -> str:
    family = model_cfg.get("family")
    if family not in MODELS:
        raise ConfigError("model.family", f"unknown model family {family!r}", MODELS.names())
    return family


def check_model_config(model_cfg: Mapping[str, Any], seq_len: int) -> None:
    """Known family, only its hyperparameters, and (language models) `train.seq_len` within its positions."""
    family = _family(model_cfg)
    MODELS.check(family, {k: v for k, v in model_cfg.items() if k not in NOT_BUILDER_KWARGS})
    if family in CONTRASTIVE_FAMILIES:
        return  # text length is the model's own context, not train.seq_len
    key = "n_positions" if "n_positions" in model_cfg else "max_position_embeddings"
    positions = model_cfg.get(key)
    if positions is not None and seq_len > positions:
        raise ConfigError("train.seq_len", f"must be <= {positions} (model.{key} of model={model_cfg.get('name')}), "
                          f"got {seq_len}")


def model_kind(model_cfg: Mapping[str, Any]) -> str:
    """`"contrastive"` for image–text models (CLIP), `"causal_lm"` for language models."""
    return "contrastive" if _family(model_cfg) in CONTRASTIVE_FAMILIES else "causal_lm"


def build_hf_config(model_cfg: Mapping[str, Any], vocab_size: int | None = None):
    """The transformers config a model node describes; `vocab_size` (from a tokenizer) wins if given."""
    cfg = plain_mapping(model_cfg)
    family = _family(cfg)
    kwargs = {k: v for k, v in cfg.items() if k not in NOT_BUILDER_KWARGS}
    if vocab_size is not None:
        kwargs["vocab_size"] = int(vocab_size)
    return MODELS.build(family, **kwargs)


def build_model(
    model_cfg: Mapping[str, Any],
    vocab_size: int | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Randomly initialised model (SDPA attention; causal LMs keep their causal mask implicit when
    compiled, see models/attention.py). `device="meta"` allocates nothing."""
    import torch

    hf_config = build_hf_config(model_cfg, vocab_size)
    with torch.device(device):
        if hf_config.model_type == "clip":
            from transformers import CLIPModel

            model = CLIPModel._from_config(hf_config, attn_implementation="sdpa", dtype=dtype)
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_config(hf_config, attn_implementation=causal_sdpa(), dtype=dtype)
    return model


def forward_loss(
    model: nn.Module, batch: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Training loss and detached extras.

    Causal LMs: `batch = {"input_ids": [B, T]}` (labels default to the inputs; the model shifts them).
    Mixtral adds `router_aux_loss_coef × router_aux_loss` to the loss and reports both parts.
    CLIP: `batch = {"input_ids", "attention_mask", "pixel_values"}` gives the symmetric contrastive loss.
    """
    if model.config.model_type == "clip":
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            pixel_values=batch["pixel_values"],
            return_loss=True,
        )
        return out.loss, {"logit_scale": model.logit_scale.detach().exp()}
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"),  # per-document positions: data.document_mask
        labels=batch.get("labels", batch["input_ids"]),
        **causal_kwargs(model, batch),  # an unpadded, unpacked batch: no dense mask, also when compiled
    )
    extras: dict[str, torch.Tensor] = {}
    aux = getattr(out, "aux_loss", None)
    if aux is not None:
        aux = aux.detach()
        extras["router_aux_loss"] = aux
        extras["lm_loss"] = out.loss.detach() - model.config.router_aux_loss_coef * aux
    return out.loss, extras
