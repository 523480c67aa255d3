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

# Exact counts at each preset's own vocabulary (Llama-2 7B/13B are the published HF checkpoints' sizes).
EXPECTED_PARAMS = {
    "llama_tiny": 7_358_720,
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
    assert model.config._attn_implementation == "sdpa"
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
