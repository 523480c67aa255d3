"""ClipperCallback in a tiny offline transformers Trainer run."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from adagc_repro.clipping import build_clipper  # noqa: E402
from adagc_repro.errors import ConfigError  # noqa: E402
from adagc_repro.integrations.hf import CLIPPER_STATE_FILE, ClipperCallback  # noqa: E402

STEPS = 3


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 12, length: int = 16, vocab: int = 64):
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


@pytest.fixture(scope="module")
def tiny_llama():
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


def train(model, tmp_path, callbacks=(), **overrides):
    settings = dict(output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=2,
                    gradient_accumulation_steps=2, learning_rate=1e-2, logging_steps=1, save_strategy="no",
                    report_to=[], use_cpu=True, disable_tqdm=True)
    args = transformers.TrainingArguments(**{**settings, **overrides})
    trainer = transformers.Trainer(model=model, args=args, train_dataset=RandomTokens(), callbacks=list(callbacks))
    trainer.train()
    return trainer


def test_callback_global_clip_equals_trainer_max_grad_norm(tiny_llama, tmp_path):
    reference = train(copy.deepcopy(tiny_llama), tmp_path / "ref", max_grad_norm=1e-3)
    callback = ClipperCallback(build_clipper("global", max_norm=1e-3))
    ours = train(copy.deepcopy(tiny_llama), tmp_path / "ours", callbacks=[callback], save_strategy="steps",
                 save_steps=STEPS)
    assert ours.args.max_grad_norm == 0.0  # Trainer's own clipping was turned off
    assert int(callback.clipper.step) == STEPS  # once per optimizer step, after accumulation
    for (name, a), b in zip(reference.model.named_parameters(), ours.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
    logged = [entry for entry in ours.state.log_history if "clip/frac_clipped" in entry]
    assert len(logged) == STEPS and logged[-1]["clip/frac_clipped"] == 1.0
    saved = torch.load(tmp_path / "ours" / f"checkpoint-{STEPS}" / CLIPPER_STATE_FILE)
    assert saved["name"] == "global" and int(saved["state"]["step"]) == STEPS


def test_nonfinite_gradients_skip_the_update(tiny_llama, tmp_path):
    model = copy.deepcopy(tiny_llama)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.model.layers[0].mlp.up_proj.weight.register_hook(lambda grad: grad * float("nan"))
    callback = ClipperCallback(build_clipper("adagc", warmup_steps=1))
    train(model, tmp_path, callbacks=[callback])
    assert callback.nonfinite_skips == STEPS and int(callback.clipper.step) == 0
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]), name


def test_a_clipper_that_watches_micro_batches_is_attached_before_training(tiny_llama, tmp_path):
    clipper = build_clipper("aggc", norm_source="micro_batches", total_steps=STEPS)
    callback = ClipperCallback(clipper)
    train(copy.deepcopy(tiny_llama), tmp_path, callbacks=[callback])  # raised "attach" at step 1 before
    assert int(callback.clipper.step) == STEPS


def test_clippers_that_need_the_loss_are_refused():
    with pytest.raises(ConfigError, match=r"clip\.name"):
        ClipperCallback(build_clipper("skip_step"))
