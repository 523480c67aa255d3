"""Spike triggers (adagc_repro.faults): each seam against an independent computation, determinism,
config composition and run ids, and the done-when check on the tiny model."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import tiny_overrides
from torch import nn

from adagc_repro import config as config_lib
from adagc_repro import launch
from adagc_repro.errors import ConfigError
from adagc_repro.faults import FaultSet, build_faults
from adagc_repro.faults.base import FaultContext
from adagc_repro.faults.bitflip import flip_bits
from adagc_repro.faults.lowp_norm import low_precision_class


def faults(node: dict, seed: int = 0, rank: int = 0, vocab_size: int = 100) -> FaultSet:
    built = build_faults(node, seed=seed, rank=rank)
    built.context.vocab_size = vocab_size
    return built


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 4)
        self.proj = nn.Linear(4, 3)

        self.config = SimpleNamespace(vocab_size=100)


def with_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    return {name: p.grad.clone() for name, p in model.named_parameters()}


# ------------------------------------------------------------------------------------ gradients
def test_grad_scale_scales_matching_tensors_at_its_steps_only():
    model = Tiny()
    fault = faults({"grad_scale": {"step": 5, "duration": 2, "factor": 1e3, "tensors": "proj.*"}})
    before = with_grads(model)
    fault.after_backward(model, 4)
    assert all(torch.equal(p.grad, before[n]) for n, p in model.named_parameters())
    for step in (5, 6):
        fault.after_backward(model, step)
    fault.after_backward(model, 7)
    grads = dict(model.named_parameters())
    assert torch.equal(grads["embed.weight"].grad, before["embed.weight"])
    for name in ("proj.weight", "proj.bias"):
        torch.testing.assert_close(grads[name].grad, before[name] * 1e6)
    assert fault.events(5) == {"fault": {"grad_scale": {"factor": 1e3, "tensors": "proj.*"}}}
    assert fault.events(4) == {} and fault.events(7) == {}


def test_grad_scale_glob_that_matches_nothing_names_the_key():
    model = Tiny()
    with_grads(model)
    with pytest.raises(ConfigError, match=r"fault\.grad_scale\.tensors: 'attn\*' matches no parameter"):
        faults({"grad_scale": {"step": 1, "tensors": "attn*"}}).after_backward(model, 1)


def _flip_reference(values: np.ndarray, index: np.ndarray, bit: int) -> np.ndarray:
    """The same flips through Python's struct: float32 bytes as an unsigned int, XOR, back."""
    out = values.copy()
    for i in index:
        (word,) = struct.unpack("<I", struct.pack("<f", float(values[i])))
        (out[i],) = struct.unpack("<f", struct.pack("<I", word ^ (1 << bit)))
    return out


@pytest.mark.parametrize("bit", [0, 27, 30, 31])
def test_bitflip_flips_one_bit_of_the_chosen_entries(bit):
    values = torch.randn(1000) * 1e-3
    grad = values.clone()
    flip_bits(grad, bit, 0.01, torch.Generator().manual_seed(3))
    index = torch.randperm(1000, generator=torch.Generator().manual_seed(3))[:10].numpy()
    expected = _flip_reference(values.numpy(), index, bit)
    assert np.array_equal(grad.numpy().view(np.uint32), expected.view(np.uint32))
    assert (grad != values).sum() == 10


def test_bitflip_is_deterministic_per_seed_step_and_tensor_not_rank():
    def flipped(seed, step, rank):
        model = Tiny()
        torch.manual_seed(0)
        with_grads(model)
        fault = faults({"bitflip": {"step": step, "bit": 31, "fraction": 0.1}}, seed=seed, rank=rank)
        fault.after_backward(model, step)
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    reference = flipped(0, 5, 0)
    assert torch.equal(reference, flipped(0, 5, 1))  # replicated (DDP) gradients stay identical
    assert not torch.equal(reference, flipped(1, 5, 0))
    assert not torch.equal(reference, flipped(0, 6, 0))


# ------------------------------------------------------------------------------------- batches
@pytest.mark.parametrize("kind", ["repeat", "uniform", "rare_run"])
def test_data_outlier_replaces_the_chosen_rows(kind):
    ids = torch.arange(8 * 16).reshape(8, 16) % 50
    fault = faults({"data_outlier": {"step": 3, "kind": kind, "fraction": 0.5}}, vocab_size=100)
    assert fault.before_forward({"input_ids": ids}, 2)["input_ids"] is ids
    out = fault.before_forward({"input_ids": ids}, 3)["input_ids"]
    changed = (out != ids).any(dim=1)
    assert changed.sum() == 4 and torch.equal(out[~changed], ids[~changed])
    rows = out[changed]
    if kind == "repeat":
        assert (rows == rows[0, 0]).all()
    elif kind == "uniform":
        assert rows.min() >= 0 and rows.max() < 100 and len(rows.unique()) > 20
    else:
        run = rows == 99  # the last vocabulary id, which the natural ids here never hold
        assert (run.sum(dim=1) == 8).all()
        starts = run.int().argmax(dim=1)
        assert all(run[i, s : s + 8].all() for i, s in enumerate(starts.tolist()))
        assert torch.equal(rows[~run], ids[changed][~run])


def test_data_outlier_is_deterministic_and_differs_by_rank_and_micro_batch():
    ids = torch.arange(4 * 32).reshape(4, 32) % 50

    def outliers(rank=0, micro=0, seed=0):
        fault = faults({"data_outlier": {"step": 1, "kind": "uniform", "fraction": 0.5}}, seed=seed, rank=rank)
        return fault.before_forward({"input_ids": ids}, 1, micro)["input_ids"]

    assert torch.equal(outliers(), outliers())
    assert not torch.equal(outliers(), outliers(rank=1))
    assert not torch.equal(outliers(), outliers(micro=1))
    assert not torch.equal(outliers(), outliers(seed=1))


# ------------------------------------------------------------------------------------ schedule
def test_lr_spike_multiplies_the_schedule_for_its_duration_and_checkpoints():
    from adagc_repro.optim import build_schedule

    def lrs(lr_factor):
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        schedule = build_schedule({"name": "cosine", "warmup_steps": 3}, optimizer, 20, lr_factor=lr_factor)
        seen = []
        for _ in range(20):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        return seen, schedule

    fault = faults({"lr_spike": {"step": 6, "duration": 3, "factor": 10.0}})
    plain, _ = lrs(None)
    spiked, schedule = lrs(fault.lr_factor)
    for step in range(1, 21):  # the loop's step s uses list position s - 1
        expected = plain[step - 1] * (10.0 if 6 <= step <= 8 else 1.0)
        assert spiked[step - 1] == pytest.approx(expected), step
    buffer = io.BytesIO()
    torch.save(schedule.state_dict(), buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)  # checkpoints never unpickle objects


# ---------------------------------------------------------------------------------------- model
def test_lowp_norm_switches_rmsnorm_to_bf16_at_its_step():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    reference = LlamaForCausalLM(config)
    reference.load_state_dict(model.state_dict())
    fault = faults({"lowp_norm": {"step": 3, "duration": 2}})
    fault.at_model_build(model)
    norm = model.model.norm
    norm.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(2, 5, 32)

    fault.before_forward({}, 2)
    assert torch.equal(norm(x), reference.model.norm.__class__.forward(norm, x))
    fault.before_forward({}, 3)
    low = x.bfloat16()
    expected = (norm.weight.bfloat16() * (low * torch.rsqrt(low.pow(2).mean(-1, keepdim=True) + 1e-6))).float()
    assert torch.equal(norm(x), expected)
    assert not torch.equal(norm(x), reference.model.norm.__class__.forward(norm, x))
    fault.before_forward({}, 5)
    assert not norm.low_precision
    assert model.state_dict().keys() == reference.state_dict().keys()
    assert fault.events(3) == {"fault": {"lowp_norm": {"dtype": "bfloat16", "modules": 3}}}
    assert fault.events(4) == {"fault": {"lowp_norm": {"dtype": "bfloat16", "modules": 3}}}


def test_lowp_layer_norm_matches_a_bf16_layer_norm():
    norm = nn.LayerNorm(16)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(3, 16)
    norm.__class__ = low_precision_class(nn.LayerNorm)
    norm.low_precision = True
    expected = torch.nn.functional.layer_norm(x.bfloat16(), (16,), norm.weight.bfloat16(), norm.bias.bfloat16(), 1e-5)
    assert torch.equal(norm(x), expected.float())


# ------------------------------------------------------------------------------- no fault, config
class NoParameters(nn.Module):
    def named_parameters(self, *args, **kwargs):
        raise AssertionError("an empty FaultSet must not look at the parameters")


def test_a_run_without_faults_does_no_work_at_any_seam():
    empty = build_faults({}, seed=0)
    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long)}
    assert not empty and not empty.changes_lr
    assert empty.before_forward(batch, 1) is batch
    empty.after_backward(NoParameters(), 1)
    assert empty.events(1) == {} and empty.summary(10) == []


def test_no_fault_keeps_plain_run_ids_and_faults_enter_the_run_id():
    plain = config_lib.compose([])
    assert "fault" not in config_lib.semantic_view(plain)
    one = config_lib.compose(["fault=grad_scale"])
    moved = config_lib.compose(["fault=grad_scale", "meta.fault_step=130"])
    both = config_lib.compose(["fault=[grad_scale,lr_spike]", "fault.lr_spike.factor=3"])
    assert one.fault.grad_scale.step == 120 and moved.fault.grad_scale.step == 130
    assert set(both.fault) == {"grad_scale", "lr_spike"} and both.fault.lr_spike.factor == 3
    ids = {config_lib.run_id(cfg) for cfg in (plain, one, moved, both)}
    assert len(ids) == 4


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("fault.grad_scale.factr=2", "fault.grad_scale.factr: unknown key"),
        ("fault.grad_scale.step=0", "fault.grad_scale.step: must be >= 1"),
        ("fault=data_outlier", None),
    ],
)
def test_bad_fault_config_is_one_line(override, message):
    overrides = ["fault=grad_scale", override] if override.startswith("fault.") else [override, "fault.data_outlier.kind=spiky"]
    with pytest.raises(ConfigError) as error:
        config_lib.compose(overrides)
    text = str(error.value)
    assert "\n" not in text
    assert text.startswith(message or "fault.data_outlier.kind: unknown kind 'spiky' (allowed: repeat, uniform, rare_run)")


def test_summary_records_fired_steps_and_where_to_observe():
    fault = build_faults(
        {"grad_scale": {"step": 8}, "data_outlier": {"step": 4, "duration": 3}, "lowp_norm": {"step": 9, "duration": 0}},
        seed=0,
    )
    records = {r["name"]: r for r in fault.summary(20)}
    assert records["grad_scale"]["fired_steps"] == [8, 8] and records["grad_scale"]["observe_from"] == 9
    assert records["data_outlier"]["fired_steps"] == [4, 6] and records["data_outlier"]["observe_from"] == 7
    assert records["lowp_norm"]["fired_steps"] == [9, 20] and records["lowp_norm"]["observe_from"] == 9
    assert fault.events(9).keys() == {"fault"} and fault.events(10) == {}  # open-ended: onset only
    assert isinstance(fault.context, FaultContext)


# ---------------------------------------------------------------------------- done when (tiny model)
FAULT_STEP = 8
TINY_MODEL = [
    "model.hidden_size=64",
    "model.intermediate_size=172",
    "model.num_hidden_layers=2",
    "model.num_attention_heads=2",
    "train.steps=22",
    "train.batch_size=8",
    "train.seq_len=32",
    "optim.lr=5e-3",
    "schedule.warmup_steps=2",
]


def _train(tiny, clip: str, *fault: str) -> tuple[list[dict], dict]:
    extra = ["clip.warmup_steps=5"] if clip == "adagc" else []  # AdaGC's warm-up ends before the fault
    cfg = config_lib.compose(tiny(f"clip={clip}", *TINY_MODEL, *extra, *fault))
    outcome = launch.run_job(cfg, [])
    assert outcome.status == "done", outcome.detail
    run_dir = Path(cfg.paths.results) / "runs" / outcome.run_id
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if "loss" in line], json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def grad_scale_runs(tmp_path_factory):
    """clip=none and clip=adagc, each with fault=grad_scale (×1000 at step 8) and without (the trend)."""
    tmp = tmp_path_factory.mktemp("spike")
    fault = ("fault=grad_scale", f"meta.fault_step={FAULT_STEP}", "fault.grad_scale.factor=1000")
    return {
        (clip, faulted): _train(lambda *o: tiny_overrides(tmp, *o), clip, *(fault if faulted else ()))
        for clip in ("none", "adagc")
        for faulted in (True, False)
    }


def test_grad_scale_after_warmup_spikes_without_clipping_and_not_with_adagc(grad_scale_runs):
    """The pre-fault trend is the same seed's fault-free run, identical up to the fault step.

    clip=none: the grad norm at the fault is > 100× its pre-fault median and the loss of the next 14
    steps is on average ≥ 3% above the trend (AdamW's second moment absorbs the ×1000 gradient, so the
    run stalls while the trend falls). clip=adagc: every loss after the fault is within 1% of the trend.
    """
    for clip in ("none", "adagc"):
        (faulted, summary), (trend, _) = grad_scale_runs[(clip, True)], grad_scale_runs[(clip, False)]
        loss = np.array([line["loss"] for line in faulted])
        expected = np.array([line["loss"] for line in trend])
        norms = np.array([line["grad_norm"] for line in faulted])
        assert np.array_equal(loss[: FAULT_STEP - 1], expected[: FAULT_STEP - 1])  # nothing before the fault
        assert norms[FAULT_STEP - 1] > 100 * np.median(norms[: FAULT_STEP - 1])
        assert [line["step"] for line in faulted if "fault" in line] == [FAULT_STEP]
        assert summary["faults"][0]["fired_steps"] == [FAULT_STEP, FAULT_STEP]
        excess = loss[FAULT_STEP:] / expected[FAULT_STEP:] - 1.0
        if clip == "none":
            assert excess.mean() >= 0.03, excess
        else:
            assert np.abs(excess).max() <= 0.01, excess
