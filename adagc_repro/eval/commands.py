"""`adagc-repro eval RUN_ID... [eval=<name>] [eval.<key>=<value>...]`: evaluate finished runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adagc_repro.config import conf_dir, group_options
from adagc_repro.errors import ConfigError

OVERRIDE_FORMS = ("eval=<name>", "eval.<key>=<value>")


def load_eval_config(overrides: list[str]):
    """The `eval` node: conf/eval/<name>.yaml (default: "default") with `eval.<key>=<value>` applied."""
    from omegaconf import OmegaConf

    name, dotlist = "default", []
    for override in overrides:
        key, has_value, value = override.lstrip("+").partition("=")
        if key == "eval" and has_value:
            name = value
        elif key.startswith("eval.") and has_value:
            dotlist.append(f"{key.removeprefix('eval.')}={value}")
        else:
            raise ConfigError("overrides", f"'{override}' is not an eval override", OVERRIDE_FORMS)
    group_file = conf_dir() / "eval" / f"{name}.yaml"
    if not group_file.exists():
        raise ConfigError("eval", f"unknown eval config '{name}'", group_options("eval"))
    return OmegaConf.merge(OmegaConf.load(group_file), OmegaConf.from_dotlist(dotlist))


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "-" if value is None else str(value)


def _print_table(results: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    task_columns: dict[str, str] = {}
    for result in results.values():
        task_columns.update(result.get("lm_eval", {}).get("metric_used", {}))
    table = Table(title="Evaluation")
    for column in (
        "run",
        "step",
        "wikitext ppl",
        "bits/byte",
        *(f"{t} ({m})" for t, m in task_columns.items()),
        "avg acc",
    ):
        table.add_column(column, justify="left" if column == "run" else "right")
    for run_id, result in results.items():
        wikitext, lm_eval = result.get("wikitext", {}), result.get("lm_eval", {})
        task_values = [
            lm_eval.get("tasks", {}).get(task, {}).get(metric) for task, metric in task_columns.items()
        ]
        row = [run_id, result.get("step"), wikitext.get("ppl"), wikitext.get("bits_per_byte"), *task_values]
        table.add_row(*map(_format, row), _format(lm_eval.get("avg_acc")))
    Console().print(table)


def eval_command(
    run_ids: list[str], overrides: list[str], results: Path, device: str
) -> dict[str, dict[str, Any]]:
    """Evaluate each run's final model, update its eval.json, print one table; returns {run_id: eval.json}."""
    from adagc_repro.eval.run_eval import check_eval_config, evaluate_run

    eval_cfg = load_eval_config(overrides)
    config = check_eval_config(eval_cfg)
    if not any((config.get(section) or {}).get("enabled") for section in ("wikitext", "lm_eval")):
        raise ConfigError(
            "eval",
            "nothing to evaluate: enable eval.wikitext.enabled or eval.lm_eval.enabled",
            group_options("eval"),
        )
    run_dirs = {run_id: Path(results) / "runs" / run_id for run_id in run_ids}
    for run_id, run_dir in run_dirs.items():
        if not run_dir.is_dir():
            raise ConfigError("run_id", f"no run '{run_id}' under {Path(results) / 'runs'}")
    evaluated = {
        run_id: evaluate_run(run_dir, eval_cfg, device=device) for run_id, run_dir in run_dirs.items()
    }
    _print_table(evaluated)
    return evaluated
