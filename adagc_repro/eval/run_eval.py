"""Evaluate a model as the `eval` config asks (WikiText perplexity, lm-eval tasks) and record eval.json."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from adagc_repro.atomic import write_json
from adagc_repro.errors import ConfigError
from adagc_repro.feedback import status
from adagc_repro.run_log import finite_or_none

WIKITEXT_KEYS = ("enabled", "path", "name", "split", "stride", "max_tokens", "batch_size")
LM_EVAL_KEYS = ("enabled", "tasks", "limit", "batch_size", "num_fewshot", "include_path")
EVAL_KEYS = ("wikitext", "lm_eval", "every_n_steps")


def plain_config(config) -> dict[str, Any]:
    """A plain dict from a DictConfig or mapping; unset mandatory values ("???") become a ConfigError."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    if not isinstance(config, DictConfig):
        config = OmegaConf.create(dict(config))
    try:
        return OmegaConf.to_container(config, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        raise ConfigError(f"eval.{error.full_key}", "must be set") from None


def _section(config: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    section = config.get(name) or {}
    for key in section:
        if key not in allowed:
            raise ConfigError(f"eval.{name}.{key}", "unknown key", allowed)
    return section


def check_eval_config(eval_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The eval config as a plain dict, with unknown keys rejected."""
    config = plain_config(eval_cfg)
    for key in config:
        if key not in EVAL_KEYS:
            raise ConfigError(f"eval.{key}", "unknown key", EVAL_KEYS)
    _section(config, "wikitext", WIKITEXT_KEYS)
    lm_eval = _section(config, "lm_eval", LM_EVAL_KEYS)
    if lm_eval.get("enabled") and not lm_eval.get("tasks"):
        raise ConfigError(
            "eval.lm_eval.tasks", "lm-eval is enabled but no tasks are set (eval.lm_eval.tasks=[...])"
        )
    if lm_eval.get("enabled") and importlib.util.find_spec("lm_eval") is None:
        from adagc_repro.eval.lm_eval_runner import INSTALL_HINT

        raise ConfigError("eval.lm_eval.enabled", f"lm-eval is not installed: {INSTALL_HINT}")
    return config


def run_evaluations(
    model, tokenizer, eval_cfg: Mapping, *, seq_len: int, device, step: int
) -> dict[str, Any]:
    """The content of eval.json for `model` at `step`: {"step", "wikitext"?, "lm_eval"?}; a section is
    present only when the config enables it."""
    config = check_eval_config(eval_cfg)
    result: dict[str, Any] = {"step": step}
    wikitext = config.get("wikitext") or {}
    if wikitext.get("enabled"):
        from adagc_repro.eval.perplexity import evaluate_text_perplexity
        from adagc_repro.eval.wikitext import load_wikitext

        name, split = wikitext.get("name", "wikitext-2-raw-v1"), wikitext.get("split", "test")
        text = load_wikitext(wikitext.get("path"), name=name, split=split)
        stride = wikitext.get("stride")
        with status(f"evaluating WikiText perplexity ({name}:{split})"):
            scores = evaluate_text_perplexity(
                model,
                tokenizer,
                text,
                seq_len=seq_len,
                stride=stride,
                batch_size=wikitext.get("batch_size", 8),
                device=device,
                max_tokens=wikitext.get("max_tokens"),
            )
        source = wikitext.get("path") or f"wikitext/{name}:{split}"
        result["wikitext"] = {**scores, "source": str(source), "seq_len": seq_len, "stride": stride}
    lm_eval = config.get("lm_eval") or {}
    if lm_eval.get("enabled"):
        from adagc_repro.eval.lm_eval_runner import run_lm_eval

        result["lm_eval"] = run_lm_eval(
            model,
            tokenizer,
            tasks=lm_eval.get("tasks"),
            batch_size=lm_eval.get("batch_size", 8),
            max_length=seq_len,
            limit=lm_eval.get("limit"),
            num_fewshot=lm_eval.get("num_fewshot", 0),
            include_path=lm_eval.get("include_path"),
        )
    return result


def eval_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """Flat `eval/*` scalars of a run_evaluations result, for metrics.jsonl during training."""
    metrics = {}
    for key in ("loss", "ppl", "bits_per_byte"):
        if key in result.get("wikitext", {}):
            metrics[f"eval/wikitext_{key}"] = result["wikitext"][key]
    lm_eval = result.get("lm_eval", {})
    for task, metric in lm_eval.get("metric_used", {}).items():
        metrics[f"eval/{task}_{metric}"] = lm_eval["tasks"][task][metric]
    if lm_eval.get("avg_acc") is not None:
        metrics["eval/avg_acc"] = lm_eval["avg_acc"]
    return metrics


def final_model_dir(run_dir: Path) -> Path:
    """`<paths.checkpoints>/<run_id>/final_model` of a finished run, from its config.yaml."""
    from omegaconf import OmegaConf

    run_id = run_dir.name
    if not (run_dir / "DONE").exists():
        raise ConfigError("run_id", f"run {run_id} is not finished (no DONE marker in {run_dir})")
    config_file = run_dir / "config.yaml"
    if not config_file.exists():
        raise ConfigError("run_id", f"run {run_id} has no config.yaml in {run_dir}")
    checkpoints = OmegaConf.select(OmegaConf.load(config_file), "paths.checkpoints")
    if checkpoints is None:
        raise ConfigError("paths.checkpoints", f"run {run_id}: config.yaml does not set paths.checkpoints")
    model_dir = Path(checkpoints).expanduser() / run_id / "final_model"
    if not (model_dir / "config.json").exists():
        raise ConfigError("run_id", f"run {run_id} has no final model at {model_dir}")
    return model_dir


def _run_length(run_dir: Path, config) -> tuple[int, int]:
    """(seq_len, last step) of a finished run."""
    from omegaconf import OmegaConf

    seq_len = OmegaConf.select(config, "train.seq_len")
    if seq_len is None:
        raise ConfigError("train.seq_len", f"run {run_dir.name}: config.yaml does not set train.seq_len")
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    return int(seq_len), int(summary.get("steps", OmegaConf.select(config, "train.steps", default=0)))


def evaluate_run(run_dir: Path, eval_cfg: Mapping, *, device: str = "cpu") -> dict[str, Any]:
    """Evaluate the final model of a finished run and merge the result into its eval.json.

    Sections this evaluation produces replace the same sections of an existing eval.json; others
    (e.g. lm_eval results from an earlier call) are kept. Returns the merged content.
    """
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = Path(run_dir)
    check_eval_config(eval_cfg)
    model_dir = final_model_dir(run_dir)
    seq_len, step = _run_length(run_dir, OmegaConf.load(run_dir / "config.yaml"))
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir).to(device)
    except ValueError as error:
        raise ConfigError(
            "run_id", f"run {run_dir.name}: the final model is not a causal LM ({error})"
        ) from error
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    result = run_evaluations(model, tokenizer, eval_cfg, seq_len=seq_len, device=device, step=step)
    eval_file = run_dir / "eval.json"
    merged = json.loads(eval_file.read_text()) if eval_file.exists() else {}
    merged.update(finite_or_none(result))
    write_json(eval_file, merged)
    return merged
