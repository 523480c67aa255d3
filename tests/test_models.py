"""Model zoo: presets build on the meta device with exact sizes; loss, FLOPs and config validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adagc_repro.errors import ConfigError
from adagc_repro.models import (
    MODELS,
    build_model,
    count_parameters,
    describe_presets,
    flops_per_token,
    forward_loss,
    model_kind,
)
from adagc_repro.models.presets import load_preset

CONF_MODEL = Path(__file__).resolve().parents[1] / "conf" / "model"

# Exact counts at each preset's own vocabulary. Llama-2 7B/13B, GPT-2 medium (+1024 positions), Qwen3-1.7B
# (1.7B total, 1.4B non-embedding) and CLIP ViT-B/16 are the published checkpoints' sizes.
EXPECTED_PARAMS = {
    "llama_tiny": 7_358_720,
    "gpt2_345m": 355_871_744,
    "mixtral_tiny": 11_540_736,
    "mixtral_8x1b": 4_761_913_344,
    "qwen3_1_7b": 1_720_574_976,
    "clip_tiny": 161_025,
    "clip_vit_b16": 149_620_737,
    "llama_60m": 58_073_600,
    "llama_130m": 134_105_856,
    "llama_350m": 367_969_280,
    "llama_1b": 1_339_082_752,
    "llama2_7b": 6_738_415_616,
    "llama2_13b": 13_015_864_320,
}

TINY = {
    "name": "t",
    "family": "llama",
    "vocab_size": 128,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 64,
}


@pytest.fixture(scope="module")
def presets() -> dict[str, dict]:
    return {row["name"]: row for row in describe_presets(CONF_MODEL)}


def test_every_preset_builds_on_meta_with_expected_params(presets):
    assert set(presets) == set(EXPECTED_PARAMS)
    for name, params in EXPECTED_PARAMS.items():
        assert presets[name]["params"] == params, name
    assert all(row["flops_per_token"] > 0 for row in presets.values())


def test_every_preset_file_is_named_after_itself():
    for path in CONF_MODEL.glob("*.yaml"):
        preset = load_preset(path)
        assert preset["name"] == path.stem
        assert preset["family"] in MODELS.names()


def test_meta_build_allocates_nothing():
    model = build_model(load_preset(CONF_MODEL / "llama2_13b.yaml"), device="meta")
    assert all(p.is_meta for p in model.parameters())


def test_flops_match_torchtitan_llama3_8b_arithmetic():
    # torchtitan: 6·(8.03e9 − 128256·4096) + 12·32·32·128·8192 ≈ 57.9 GFLOP/token.
    llama3_8b = {
        "family": "llama",
        "vocab_size": 128256,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 8192,
        "rope_theta": 500000.0,
    }
    model = build_model(llama3_8b, device="meta")
    n = count_parameters(model)
    assert n == 8_030_261_248
    expected = 6 * (n - 128256 * 4096) + 12 * 32 * 32 * 128 * 8192
    assert flops_per_token(model, 8192) == expected
    assert flops_per_token(model, 8192) == pytest.approx(57.9e9, rel=1e-3)


def test_flops_by_hand_for_tiny_llama():
    model = build_model(TINY)
    embed = 128 * 32
    assert flops_per_token(model, 16) == 6 * (count_parameters(model) - embed) + 12 * 2 * 4 * 8 * 16


def test_vocab_size_argument_overrides_preset():
    model = build_model(load_preset(CONF_MODEL / "llama_tiny.yaml"), 1000, device="meta")
    assert model.get_input_embeddings().weight.shape == (1000, 256)


def test_unknown_key_and_family_raise_config_error():
    with pytest.raises(ConfigError, match=r"model\.hidden_sise"):
        build_model({**TINY, "hidden_sise": 8}, device="meta")
    with pytest.raises(ConfigError, match=r"model\.family"):
        build_model({"name": "x", "family": "rnn"}, device="meta")


def test_model_kind():
    assert model_kind(TINY) == "causal_lm"
    assert model_kind({"family": "clip"}) == "contrastive"


def test_tiny_llama_forward_loss_is_near_log_vocab_and_trains():
    torch.manual_seed(0)
    model = build_model(TINY)
    assert model.config._attn_implementation == "sdpa_causal"  # SDPA; the causal mask implicit when it can be
    batch = {"input_ids": torch.randint(0, 128, (4, 16))}
    loss, extras = forward_loss(model, batch)
    assert extras == {}
    assert abs(loss.item() - torch.log(torch.tensor(128.0)).item()) < 0.5
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(20):
        opt.zero_grad()
        forward_loss(model, batch)[0].backward()
        opt.step()
    assert forward_loss(model, batch)[0].item() < loss.item() - 1.0


MOE = {
    "name": "m",
    "family": "mixtral",
    "vocab_size": 128,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "router_aux_loss_coef": 0.02,
    "max_position_embeddings": 64,
}


def test_mixtral_loss_includes_logged_router_aux_loss():
    torch.manual_seed(0)
    model = build_model(MOE)
    loss, extras = forward_loss(model, {"input_ids": torch.randint(0, 128, (2, 16))})
    assert set(extras) == {"router_aux_loss", "lm_loss"}
    assert extras["router_aux_loss"] > 0
    torch.testing.assert_close(loss.detach(), extras["lm_loss"] + 0.02 * extras["router_aux_loss"])


def test_mixtral_flops_count_active_experts_only():
    model = build_model(MOE, device="meta")
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert experts == 2 * 4 * (2 * 48 * 32 + 32 * 48)
    active = count_parameters(model) - 128 * 32 - experts // 2
    assert flops_per_token(model, 16) == 6 * active + 12 * 2 * 4 * 8 * 16


@pytest.mark.parametrize(
    ("cfg", "head_dim"),
    [
        (
            {
                "family": "gpt2",
                "vocab_size": 128,
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "max_position_embeddings": 64,
            },
            8,
        ),
        (
            {
                "family": "qwen3",
                "vocab_size": 128,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "head_dim": 16,
                "max_position_embeddings": 64,
            },
            16,
        ),
    ],
)
def test_tied_families_train_and_count_the_head_matmul(cfg, head_dim):
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    batch = {"input_ids": torch.randint(0, 128, (2, 16))}
    loss, _ = forward_loss(model, batch)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    position_table = 64 * 32 if cfg["family"] == "gpt2" else 0  # learned positions: a lookup, no FLOPs
    expected = 6 * (count_parameters(model) - position_table) + 12 * 2 * 4 * head_dim * 16
    assert flops_per_token(model, 16) == expected
