"""Every optimizer composes with every clipper (one clipping pass over all gradients, then one step),
and AdaGC does not freeze MoE experts that receive no tokens."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from test_optim_helpers import TINY_LLAMA

from adagc_repro.clipping import build_clipper
from adagc_repro.models import build_model, forward_loss
from adagc_repro.optim import build_optimizer

CONF = Path(__file__).resolve().parents[1] / "conf"
TINY = {**TINY_LLAMA, "num_hidden_layers": 1}
MOE = {
    "name": "m",
    "family": "mixtral",
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "max_position_embeddings": 64,
}


def conf(group: str, name: str) -> dict:
    return yaml.safe_load((CONF / group / f"{name}.yaml").read_text())


def names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def build_clip(name: str, **overrides):
    # Clip configs may interpolate the run length (`total_steps: ${train.steps}`).
    node = OmegaConf.create({"train": {"steps": 3}, "clip": conf("clip", name)})
    resolved = OmegaConf.to_container(node, resolve=True)["clip"]
    hparams = {k: v for k, v in resolved.items() if k != "name"}
    if "warmup_steps" in hparams:
        hparams["warmup_steps"] = 1  # reach the adaptive phase within the test
    return build_clipper(resolved["name"], **{**hparams, **overrides})


def all_grad_norm(model) -> float:
    return math.sqrt(
        sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None)
    )


@pytest.mark.parametrize("clip_name", names("clip"))
@pytest.mark.parametrize("optim_name", names("optim"))
def test_every_optimizer_clipper_pair_takes_finite_steps(optim_name, clip_name):
    torch.manual_seed(0)
    model = build_model(TINY)
    optimizer = build_optimizer(conf("optim", optim_name), model)
    clipper = build_clip(clip_name)
    clipper.attach(model)  # before the first backward, as the loop does
    batch = {"input_ids": torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(0))}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(2):  # the warm-up step, then the adaptive one
        loss, _ = forward_loss(model, batch)
        loss.backward()
        stats = clipper(model, loss=loss)
        assert not bool(stats.skipped)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    moved = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert len(moved) == len(before), set(before) - set(moved)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("optim_name", ["muon", "adamw"])
def test_clipping_covers_all_parameters_before_the_muon_split(optim_name):
    torch.manual_seed(0)
    model = build_model(TINY)
    optimizer = build_optimizer(conf("optim", optim_name), model)
    forward_loss(model, {"input_ids": torch.randint(0, 96, (2, 16))})[0].backward()
    stats = build_clipper("global", max_norm=1e-3)(model)
    assert float(stats.global_norm_pre) > 1e-2
    assert all_grad_norm(model) == pytest.approx(1e-3, rel=1e-3)  # Muon's and AdamW's tensors alike
    optimizer.step()


def test_adagc_does_not_freeze_experts_that_get_no_tokens():
    """Expert 3 gets no tokens through and past AdaGC's warm-up, so its slices of the stacked expert
    tensors have exactly zero gradient; once tokens reach it, it must learn. The idle experts' tensors
    are also zeroed entirely during warm-up, as with one tensor per expert (expert parallelism): AdaGC
    must not record γ = 0 for them and clip them to nothing afterwards."""
    torch.manual_seed(0)
    model = build_model(MOE)
    moe = model.model.layers[0].mlp
    blocked = {"on": True}

    def block_expert_3(module, inputs, output):
        logits, _, _ = output
        if not blocked["on"]:
            return output
        masked = logits.detach().clone()
        masked[:, 3] = -math.inf
        top, index = torch.topk(torch.softmax(masked.float(), dim=-1), module.top_k, dim=-1)
        return logits, top / top.sum(dim=-1, keepdim=True), index

    moe.gate.register_forward_hook(block_expert_3)
    optimizer = build_optimizer({**conf("optim", "adamw"), "weight_decay": 0.0}, model)
    clipper = build_clipper("adagc", lambda_rel=1.04, beta=0.99, warmup_steps=3)
    batch = {"input_ids": torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(0))}
    experts = [moe.experts.gate_up_proj, moe.experts.down_proj]

    def step(zero_expert_tensors: bool) -> list[torch.Tensor]:
        loss, _ = forward_loss(model, batch)
        loss.backward()
        if zero_expert_tensors:
            for p in experts:
                p.grad.zero_()
        stats = clipper(model, loss=loss)
        assert not bool(stats.skipped)
        grads = [p.grad[3].clone() for p in experts]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return grads

    for _ in range(3):  # warm-up: expert tensors all-zero
        step(zero_expert_tensors=True)
    expert3_before = [p[3].detach().clone() for p in experts]
    for _ in range(3):  # adaptive phase, expert 3 still idle: zero slice, no update
        assert all(torch.count_nonzero(g) == 0 for g in step(zero_expert_tensors=False))
    assert all(torch.equal(p[3], b) for p, b in zip(experts, expert3_before, strict=True))

    blocked["on"] = False
    grads = [step(zero_expert_tensors=False) for _ in range(3)]
    assert all(torch.linalg.vector_norm(g) > 0 for g in grads[-1])  # survives clipping
    moved = [float((p[3].detach() - b).abs().max()) for p, b in zip(experts, expert3_before, strict=True)]
    assert all(m > 1e-4 for m in moved), moved  # ≈ lr-sized Adam steps
