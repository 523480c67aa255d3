"""Perplexity, lm-eval and run evaluation on a tiny random Llama with a tokenizer trained on the fly."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from omegaconf import OmegaConf

from adagc_repro.config import group_options
from adagc_repro.errors import ConfigError
from adagc_repro.eval import eval_metrics, evaluate_run, run_evaluations
from adagc_repro.eval.commands import eval_command, load_eval_config
from adagc_repro.eval.lm_eval_runner import _task_metrics, metric_for, run_lm_eval
from adagc_repro.eval.perplexity import evaluate_blocks, evaluate_text_perplexity, text_windows

SEQ_LEN = 32


@pytest.fixture(scope="module")
def tokenizer():
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(list(topics.values())[:20], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4 * SEQ_LEN,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


@pytest.fixture
def wikitext_file(shared_data, tmp_path):
    """The start of WikiText-2 test (tokenizing all 1.2 MB would dominate these tests)."""
    excerpt = tmp_path / "wikitext-excerpt.txt"
    excerpt.write_text(
        (shared_data / "wikitext-2" / "test.txt").read_text(encoding="utf-8")[:20000], encoding="utf-8"
    )
    return excerpt


def window_nll(model, ids: torch.Tensor) -> float:
    """Reference: Hugging Face's own shifted mean loss of one window, times its predictions."""
    with torch.no_grad():
        return model(input_ids=ids[None], labels=ids[None]).loss.item() * (len(ids) - 1)


# --- held-out blocks and text perplexity -------------------------------------------------------


def test_blocks_loss_equals_direct_computation_and_restores_mode(model):
    blocks = torch.randint(
        0, model.config.vocab_size, (7, SEQ_LEN), generator=torch.Generator().manual_seed(1)
    )
    model.train()
    result = evaluate_blocks(model, blocks, batch_size=3, device="cpu")
    assert model.training and all(p.grad is None for p in model.parameters())
    expected = sum(window_nll(model, block) for block in blocks) / (7 * (SEQ_LEN - 1))
    assert result["tokens"] == 7 * (SEQ_LEN - 1)
    assert result["loss"] == pytest.approx(expected, rel=1e-6)
    assert result["ppl"] == pytest.approx(math.exp(expected), rel=1e-6)
    assert evaluate_blocks(model, blocks, batch_size=7, device="cpu")["loss"] == pytest.approx(
        result["loss"], rel=1e-6
    )
    model.eval()
    evaluate_blocks(model, blocks[:1], batch_size=1, device="cpu")
    assert not model.training
    with pytest.raises(ConfigError):
        evaluate_blocks(model, blocks[:, :1], batch_size=1, device="cpu")


def test_window_layout():
    assert list(text_windows(10, 4, None)) == [(0, 4, 1), (4, 8, 5), (8, 10, 9)]
    assert list(text_windows(9, 4, None)) == [(0, 4, 1), (4, 8, 5)]  # a 1-token tail predicts nothing
    assert list(text_windows(10, 4, 2)) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    assert list(text_windows(1, 4, None)) == []
    with pytest.raises(ConfigError, match="eval.wikitext.stride"):
        list(text_windows(10, 4, 5))


def test_non_overlapping_text_perplexity(model, tokenizer, wikitext_file):
    text = wikitext_file.read_text(encoding="utf-8")[:2000]
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    result = evaluate_text_perplexity(model, tokenizer, text, seq_len=SEQ_LEN, batch_size=4, device="cpu")
    windows = [ids[i : i + SEQ_LEN] for i in range(0, len(ids), SEQ_LEN)]
    windows = [w for w in windows if len(w) > 1]
    total = sum(window_nll(model, w) for w in windows)
    assert result["tokens"] == sum(len(w) - 1 for w in windows)
    assert result["loss"] == pytest.approx(total / result["tokens"], rel=1e-6)
    assert result["ppl"] == pytest.approx(math.exp(result["loss"]), rel=1e-12)
    expected_bytes = sum(len(tokenizer.decode(w[1:].tolist()).encode("utf-8")) for w in windows)
    assert result["bytes"] == expected_bytes
    assert result["bits_per_byte"] == pytest.approx(total / math.log(2) / expected_bytes, rel=1e-6)
    short = evaluate_text_perplexity(
        model, tokenizer, text, seq_len=SEQ_LEN, batch_size=4, device="cpu", max_tokens=2 * SEQ_LEN
    )
    assert short["tokens"] == 2 * (SEQ_LEN - 1)


def test_sliding_window_scores_every_token_once(model, tokenizer, wikitext_file):
    text = wikitext_file.read_text(encoding="utf-8")[:800].encode("ascii", "ignore").decode()
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    stride = SEQ_LEN // 4
    result = evaluate_text_perplexity(
        model, tokenizer, text, seq_len=SEQ_LEN, stride=stride, batch_size=5, device="cpu"
    )
    # Reference: the Hugging Face perplexity guide's loop, context tokens labelled -100.
    total, scored, previous_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + SEQ_LEN, len(ids))
        inputs = ids[begin:end]
        labels = inputs.clone()
        labels[: len(inputs) - (end - previous_end)] = -100
        with torch.no_grad():
            loss = model(input_ids=inputs[None], labels=labels[None]).loss.item()
        predicted = int((labels[1:] != -100).sum())
        total, scored, previous_end = total + loss * predicted, scored + predicted, end
        if end == len(ids):
            break
    assert result["tokens"] == scored == len(ids) - 1
    assert result["loss"] == pytest.approx(total / scored, rel=1e-6)
    assert result["bytes"] == len(tokenizer.decode(ids[1:].tolist()).encode("utf-8"))
    assert result["bits_per_byte"] == pytest.approx(total / math.log(2) / result["bytes"], rel=1e-6)
    with pytest.raises(ConfigError):
        evaluate_text_perplexity(model, tokenizer, "a", seq_len=SEQ_LEN, batch_size=1, device="cpu")


# --- lm-eval ------------------------------------------------------------------------------------

MC_ROWS = [
    {"question": "Which word names a colour?", "choices": ["red", "table", "run"], "label": 0},
    {"question": "What do you open with a key?", "choices": ["a cloud", "a door"], "label": 1},
    {"question": "Which is a number?", "choices": ["seven", "purple", "quickly", "under"], "label": 0},
    {"question": "What does a function return?", "choices": ["a value", "the ocean", "sleep"], "label": 0},
    {"question": "Which is an animal?", "choices": ["spoon", "tiger"], "label": 1},
    {"question": "What holds water?", "choices": ["a cup", "a thought", "a sound"], "label": 0},
]
LL_ROWS = [{"text": text} for text in ("the value of the object", "raise an exception", "the list is empty")]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def mc_task(path) -> dict:
    return {
        "task": "toy_mc",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(path)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "label",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
    }


LL_TASK_YAML = """task: toy_lambada
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{text.split(' ')[:-1] | join(' ')}}}}"
doc_to_target: "{{{{' ' + text.split(' ')[-1]}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture
def local_tasks(tmp_path):
    """An inline multiple-choice task dict and a folder with a loglikelihood task YAML."""
    mc = mc_task(write_jsonl(tmp_path / "mc.jsonl", MC_ROWS))
    folder = tmp_path / "tasks"
    folder.mkdir()
    ll_path = write_jsonl(tmp_path / "ll.jsonl", LL_ROWS)
    (folder / "toy_lambada.yaml").write_text(LL_TASK_YAML.format(path=ll_path))
    return mc, folder


def continuation_logprob(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """log p(continuation | context) and whether it is the greedy continuation, encoded as lm-eval does
    (whole string encoded once, split at the context's token count)."""
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    target = torch.tensor(whole[len(context_ids) :])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(whole)[None]).logits[0, len(context_ids) - 1 : -1].float()
    logprobs = torch.log_softmax(logits, -1)
    return logprobs.gather(1, target[:, None]).sum().item(), bool((logprobs.argmax(-1) == target).all())


def test_lm_eval_local_tasks_match_direct_scoring(model, tokenizer, local_tasks):
    mc, folder = local_tasks
    model.train()
    result = run_lm_eval(
        model,
        tokenizer,
        tasks=[mc, "toy_lambada"],
        batch_size=4,
        max_length=SEQ_LEN * 2,
        include_path=str(folder),
    )
    assert model.training
    acc = acc_norm = 0
    for row in MC_ROWS:
        context = f"Question: {row['question']}\nAnswer:"
        scores = [
            continuation_logprob(model, tokenizer, context, " " + choice)[0] for choice in row["choices"]
        ]
        normalised = [score / len(" " + choice) for score, choice in zip(scores, row["choices"], strict=True)]
        acc += scores.index(max(scores)) == row["label"]
        acc_norm += normalised.index(max(normalised)) == row["label"]
    contexts_and_words = [row["text"].rsplit(" ", 1) for row in LL_ROWS]
    targets = [
        continuation_logprob(model, tokenizer, context, " " + word) for context, word in contexts_and_words
    ]
    greedy = sum(is_greedy for _, is_greedy in targets)
    mean_logprob = sum(logprob for logprob, _ in targets) / len(LL_ROWS)
    assert result["tasks"]["toy_mc"]["acc"] == pytest.approx(acc / len(MC_ROWS))
    assert result["tasks"]["toy_mc"]["acc_norm"] == pytest.approx(acc_norm / len(MC_ROWS))
    assert result["tasks"]["toy_lambada"]["acc"] == pytest.approx(greedy / len(LL_ROWS))
    assert result["tasks"]["toy_lambada"]["perplexity"] == pytest.approx(math.exp(-mean_logprob), rel=1e-4)
    assert result["metric_used"] == {"toy_mc": "acc", "toy_lambada": "acc"}
    expected_avg = (result["tasks"]["toy_mc"]["acc"] + result["tasks"]["toy_lambada"]["acc"]) / 2
    assert result["avg_acc"] == pytest.approx(expected_avg)


def test_metric_choice_and_result_parsing():
    both = {"acc": 0.3, "acc_norm": 0.4}
    assert [metric_for(task, both) for task in ("hellaswag", "arc_challenge", "openbookqa", "piqa")] == [
        "acc_norm"
    ] * 4
    assert [metric_for(task, both) for task in ("lambada_openai", "arc_easy", "winogrande", "boolq")] == [
        "acc"
    ] * 4
    assert metric_for("hellaswag", {"acc": 0.3}) == "acc"
    assert metric_for("wikitext", {"word_perplexity": 30.0}) is None
    results = {
        "ai2_arc": {"acc,none": 0.5},
        "arc_easy": {"alias": "arc_easy", "acc,none": 0.5, "acc_stderr,none": "N/A", "acc_norm,none": 0.25},
        "lambada_openai": {"perplexity,none": 40.0, "acc,none": 0.1, "acc,strip": 0.2},
    }
    assert _task_metrics(results, {"ai2_arc"}) == {
        "arc_easy": {"acc": 0.5, "acc_norm": 0.25},
        "lambada_openai": {"perplexity": 40.0, "acc": 0.1},
    }


def test_missing_lm_eval_names_the_extra(model, tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match=r"pip install 'adagc-repro\[eval\]'"):
        run_lm_eval(model, tokenizer, tasks=["hellaswag"], batch_size=1, max_length=SEQ_LEN)


def test_task_list_must_be_a_list(model, tokenizer):
    with pytest.raises(ConfigError, match="eval.lm_eval.tasks"):
        run_lm_eval(model, tokenizer, tasks="hellaswag", batch_size=1, max_length=SEQ_LEN)


# --- eval config, run_evaluations, evaluate_run, the eval command --------------------------------


def test_shipped_eval_configs():
    assert {"default", "wikitext", "lm_eval_core", "lm_eval_local"} <= set(group_options("eval"))
    core = load_eval_config(["eval=lm_eval_core"])
    assert list(core.lm_eval.tasks) == [
        "lambada_openai",
        "hellaswag",
        "piqa",
        "arc_easy",
        "arc_challenge",
        "winogrande",
        "boolq",
        "openbookqa",
    ]
    default = load_eval_config([])
    assert not default.wikitext.enabled and not default.lm_eval.enabled and default.every_n_steps == 0
    merged = load_eval_config(["eval=wikitext", "eval.wikitext.stride=16", "+eval.lm_eval.limit=3"])
    assert merged.wikitext.enabled and merged.wikitext.stride == 16 and merged.lm_eval.limit == 3
    with pytest.raises(ConfigError, match="unknown eval config 'nope'"):
        load_eval_config(["eval=nope"])
    with pytest.raises(ConfigError, match="overrides"):
        load_eval_config(["train.steps=3"])


def test_run_evaluations_builds_eval_json(model, tokenizer, wikitext_file, local_tasks):
    mc, folder = local_tasks
    eval_cfg = OmegaConf.merge(
        load_eval_config(["eval=wikitext"]),
        {
            "wikitext": {"path": str(wikitext_file), "max_tokens": 300},
            "lm_eval": {"enabled": True, "tasks": [mc]},
        },
    )
    result = run_evaluations(model, tokenizer, eval_cfg, seq_len=SEQ_LEN, device="cpu", step=12)
    assert result["step"] == 12
    assert set(result["wikitext"]) >= {"loss", "ppl", "bits_per_byte", "tokens", "bytes"}
    assert result["wikitext"]["source"] == str(wikitext_file)
    assert set(result["lm_eval"]["tasks"]) == {"toy_mc"}
    assert json.loads(json.dumps(result)) == result
    flat = eval_metrics(result)
    assert flat["eval/wikitext_ppl"] == result["wikitext"]["ppl"]
    assert flat["eval/toy_mc_acc"] == flat["eval/avg_acc"] == result["lm_eval"]["avg_acc"]
    assert run_evaluations(model, tokenizer, {}, seq_len=SEQ_LEN, device="cpu", step=3) == {"step": 3}
    with pytest.raises(ConfigError, match="eval.wikitext.strides"):
        run_evaluations(model, tokenizer, {"wikitext": {"strides": 2}}, seq_len=SEQ_LEN, device="cpu", step=0)
    with pytest.raises(ConfigError, match="eval.lm_eval.tasks: lm-eval is enabled but no tasks"):
        run_evaluations(
            model, tokenizer, load_eval_config(["eval=lm_eval_local"]), seq_len=SEQ_LEN, device="cpu", step=0
        )
    unset = {"lm_eval": {"enabled": True, "tasks": "???"}}
    with pytest.raises(ConfigError, match="eval.lm_eval.tasks: must be set"):
        run_evaluations(model, tokenizer, unset, seq_len=SEQ_LEN, device="cpu", step=0)


def make_run(tmp_path, model, tokenizer, run_id="run0001", done=True):
    results, checkpoints = tmp_path / "results", tmp_path / "ckpt"
    run_dir = results / "runs" / run_id
    run_dir.mkdir(parents=True)
    OmegaConf.save(
        OmegaConf.create(
            {
                "paths": {"checkpoints": str(checkpoints), "results": str(results)},
                "train": {"seq_len": SEQ_LEN, "steps": 40},
            }
        ),
        run_dir / "config.yaml",
    )
    (run_dir / "summary.json").write_text(json.dumps({"run_id": run_id, "steps": 37}))
    if done:
        (run_dir / "DONE").touch()
        model.save_pretrained(checkpoints / run_id / "final_model")
        tokenizer.save_pretrained(checkpoints / run_id / "final_model")
    return results, run_dir


def test_evaluate_run_from_final_checkpoint_merges_eval_json(tmp_path, model, tokenizer, wikitext_file):
    results, run_dir = make_run(tmp_path, model, tokenizer)
    earlier = {"step": 37, "lm_eval": {"tasks": {}, "metric_used": {}, "avg_acc": None}}
    (run_dir / "eval.json").write_text(json.dumps(earlier))
    eval_cfg = load_eval_config(
        ["eval=wikitext", f"eval.wikitext.path={wikitext_file}", "eval.wikitext.max_tokens=400"]
    )
    merged = evaluate_run(run_dir, eval_cfg)
    assert json.loads((run_dir / "eval.json").read_text()) == merged
    assert merged["step"] == 37 and merged["lm_eval"] == earlier["lm_eval"]
    text = wikitext_file.read_text(encoding="utf-8")
    direct = evaluate_text_perplexity(
        model, tokenizer, text, seq_len=SEQ_LEN, batch_size=8, device="cpu", max_tokens=400
    )
    assert merged["wikitext"]["ppl"] == pytest.approx(direct["ppl"], rel=1e-5)
    assert not list(run_dir.glob("*.tmp"))


def test_evaluate_run_errors_name_the_run(tmp_path, model, tokenizer):
    _, unfinished = make_run(tmp_path, model, tokenizer, run_id="running1", done=False)
    with pytest.raises(ConfigError, match="run running1 is not finished"):
        evaluate_run(unfinished, load_eval_config(["eval=wikitext"]))
    (unfinished / "DONE").touch()
    with pytest.raises(ConfigError, match="run running1 has no final model"):
        evaluate_run(unfinished, load_eval_config(["eval=wikitext"]))


def test_eval_command_evaluates_and_prints(tmp_path, model, tokenizer, wikitext_file, capsys):
    results, run_dir = make_run(tmp_path, model, tokenizer, run_id="abc123")
    overrides = ["eval=wikitext", f"eval.wikitext.path={wikitext_file}", "eval.wikitext.max_tokens=200"]
    evaluated = eval_command(["abc123"], overrides, results, "cpu")
    assert set(evaluated) == {"abc123"} and evaluated["abc123"]["wikitext"]["tokens"] > 0
    output = capsys.readouterr().out
    assert "abc123" in output and "wikitext ppl" in output
    with pytest.raises(ConfigError, match="no run 'missing'"):
        eval_command(["missing"], overrides, results, "cpu")
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        eval_command(["abc123"], [], results, "cpu")
