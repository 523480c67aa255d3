"""Stacked MoE experts (experts × out × in in one tensor) are one tensor per expert for per-tensor clipping,
AGC units and Muon; a tied output head is left alone by AGC. Checked against per-expert computations."""

from __future__ import annotations

import pytest
import torch

from adagc_repro.clipping import build_clipper
from adagc_repro.models import build_model, forward_loss
from adagc_repro.models.layout import output_head_names, stacked_experts
from adagc_repro.optim import build_optimizer

EXPERTS = 4
TINY_MIXTRAL = {"name": "m", "family": "mixtral", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 16,
                "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
                "num_local_experts": EXPERTS, "num_experts_per_tok": 2, "max_position_embeddings": 32}
TINY_GPT2 = {"name": "g", "family": "gpt2", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1,
             "num_attention_heads": 2, "max_position_embeddings": 32}
GATE_UP = "model.layers.0.mlp.experts.gate_up_proj"
DOWN = "model.layers.0.mlp.experts.down_proj"


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def backward(cfg: dict, seed: int = 0, device: str = "cpu") -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(cfg, device=device)
    tokens = torch.randint(0, cfg["vocab_size"], (4, 16), generator=torch.Generator().manual_seed(seed)).to(device)
    forward_loss(model, {"input_ids": tokens})[0].backward()
    return model


def expert_grads(model) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {name: params[name].grad.clone() for name in (GATE_UP, DOWN)}


def test_the_layout_finds_stacked_experts_and_the_tied_head():
    mixtral, gpt2 = build_model(TINY_MIXTRAL, device="meta"), build_model(TINY_GPT2, device="meta")
    assert stacked_experts(mixtral) == {GATE_UP: EXPERTS, DOWN: EXPERTS}
    assert stacked_experts(gpt2) == {}
    assert output_head_names(gpt2) == {"transformer.wte.weight"}
    assert output_head_names(mixtral) == {"lm_head.weight"}


@pytest.mark.parametrize("device", DEVICES)
def test_per_tensor_clipping_gives_each_expert_its_own_norm_and_threshold(device):
    model = backward(TINY_MIXTRAL, device=device)
    before = expert_grads(model)
    per_expert = {name: g.flatten(1).norm(dim=1) for name, g in before.items()}
    max_norm = float(per_expert[GATE_UP].median())  # some experts above it, some below
    stats = build_clipper("local", max_norm=max_norm)(model)

    names = list(stats.names)
    for name, norms in per_expert.items():
        rows = [names.index(f"{name}[{e}]") for e in range(EXPERTS)]
        torch.testing.assert_close(stats.tensor_norms[rows], norms)
        after = dict(model.named_parameters())[name].grad.flatten(1).norm(dim=1)
        torch.testing.assert_close(after, norms * (max_norm / (norms + 1e-6)).clamp(max=1.0))
    assert name not in names  # the stacked tensor itself is not a unit any more


def test_adagc_keeps_one_threshold_per_expert_and_reports_them_by_name():
    model = backward(TINY_MIXTRAL)
    per_expert = expert_grads(model)[GATE_UP].flatten(1).norm(dim=1)
    clipper = build_clipper("adagc", warmup_steps=1, lambda_abs=1e9)  # warm-up without global clipping
    stats = clipper(model)
    state = clipper.state_dict()
    rows = [state["param_names"].index(f"{GATE_UP}[{e}]") for e in range(EXPERTS)]
    torch.testing.assert_close(state["state"]["gamma"][rows], per_expert)  # γ = each expert's own norm
    telemetry = clipper.telemetry(stats, top_k=len(stats.names))
    assert {row["name"] for row in telemetry["top"]} >= {f"{DOWN}[{e}]" for e in range(EXPERTS)}
    assert telemetry["layers"]["0"]["tensors"] == len([n for n in stats.names if ".layers.0." in n])


def test_agc_units_are_the_rows_of_each_expert_matrix():
    from pytorch_optimizer import agc

    model = backward(TINY_MIXTRAL)
    params = dict(model.named_parameters())
    before = expert_grads(model)
    build_clipper("agc", clip_val=0.01)(model)
    for name, grad in before.items():
        weight = params[name].detach()
        want = torch.stack([agc(weight[e], grad[e], agc_eps=1e-3, agc_clip_val=0.01, eps=1e-6) for e in range(EXPERTS)])
        torch.testing.assert_close(params[name].grad, want)


def test_agc_leaves_a_tied_output_head_alone():
    model = backward(TINY_GPT2)
    params = dict(model.named_parameters())
    wte = params["transformer.wte.weight"].grad.clone()
    attn = params["transformer.h.0.attn.c_attn.weight"].grad.clone()
    build_clipper("agc", clip_val=1e-4)(model)  # tiny clip value: every other unit is clipped
    assert torch.equal(params["transformer.wte.weight"].grad, wte)
    assert params["transformer.h.0.attn.c_attn.weight"].grad.norm() < 0.5 * attn.norm()


@pytest.mark.parametrize("device", DEVICES)
def test_muon_orthogonalises_every_expert_as_its_own_matrix(device):
    model = backward(TINY_MIXTRAL, device=device)
    params = dict(model.named_parameters())
    hparams = {"name": "muon", "lr": 0.01, "weight_decay": 0.1, "adjust_lr_fn": "match_rms_adamw"}
    optimizer = build_optimizer(hparams, model, device_type=torch.device(device).type)
    groups = {group["group"]: group["params"] for group in optimizer.param_groups}
    assert [p.shape for p in groups["muon_experts"]] == [params[GATE_UP].shape, params[DOWN].shape]

    expected = {}
    for name in (GATE_UP, DOWN):
        slices = [torch.nn.Parameter(params[name].detach()[e].clone()) for e in range(EXPERTS)]
        for piece, grad in zip(slices, params[name].grad, strict=True):
            piece.grad = grad.clone()
        reference = torch.optim.Muon(slices, lr=0.01, weight_decay=0.1, momentum=0.95, nesterov=True,
                                     ns_steps=5, adjust_lr_fn="match_rms_adamw")
        reference.step()
        expected[name] = torch.stack([piece.detach() for piece in slices])
    optimizer.step()
    for name, want in expected.items():
        torch.testing.assert_close(params[name].detach(), want)
        assert optimizer.state[params[name]]["momentum_buffer"].shape == params[name].shape


@pytest.mark.parametrize("name", ["local", "adagc"])
def test_expert_views_survive_a_state_round_trip(name):
    model = backward(TINY_MIXTRAL)
    clipper = build_clipper(name)
    clipper(model)
    fresh = build_clipper(name)
    fresh.load_state_dict(clipper.state_dict())
    fresh(backward(TINY_MIXTRAL, seed=1))  # binds, restores and steps on the per-expert names
    assert f"{GATE_UP}[{EXPERTS - 1}]" in fresh.state_dict()["param_names"]


def test_expert_views_line_up_when_some_parameters_have_no_gradient():
    model = backward(TINY_MIXTRAL)
    params = dict(model.named_parameters())
    params["model.layers.0.self_attn.q_proj.weight"].grad = None  # before the experts in parameter order
    per_expert = expert_grads(model)[DOWN].flatten(1).norm(dim=1)
    clipper = build_clipper("adagc", warmup_steps=1, lambda_abs=1e9)
    stats = clipper(model)
    assert "model.layers.0.self_attn.q_proj.weight" not in stats.names
    rows = [stats.names.index(f"{DOWN}[{e}]") for e in range(EXPERTS)]
    torch.testing.assert_close(stats.tensor_norms[rows], per_expert)
    state = clipper.state_dict()
    rows = [state["param_names"].index(f"{DOWN}[{e}]") for e in range(EXPERTS)]
    torch.testing.assert_close(state["state"]["gamma"][rows], per_expert)  # written back to the right slots
