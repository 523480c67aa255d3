"""Zero-shot downstream accuracy through EleutherAI's lm-evaluation-harness, on an in-memory model.

The headline number per task (`metric_used`) follows common practice for small pretrained models
(GPT-NeoX/Pythia and OLMo reports, spec §2.5): length-normalised accuracy (`acc_norm`) for HellaSwag,
ARC-Challenge, OpenBookQA and PIQA, where answers differ in length and raw log-likelihood favours
short ones; plain `acc` for every other task (LAMBADA, ARC-Easy, WinoGrande, BoolQ, local tasks).
`avg_acc` is the mean of the used metrics over the tasks that report an accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from adagc_repro.errors import ConfigError
from adagc_repro.feedback import status

ACC_NORM_TASKS = frozenset({"hellaswag", "arc_challenge", "openbookqa", "piqa"})
INSTALL_HINT = "pip install 'adagc-repro[eval]'"


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise ImportError(f"downstream evaluation needs lm-eval: {INSTALL_HINT} ({error})") from error
    return lm_eval.simple_evaluate, HFLM, TaskManager


def _task_manager(TaskManager, tasks: Sequence[str | Mapping], include_path: str | None):
    """Index only what the task list needs: the built-in index (~6-10 s to build) is skipped when
    every task is an inline dict or is found under `include_path`."""
    named = [task for task in tasks if isinstance(task, str) and not Path(task).is_file()]
    local = TaskManager(include_defaults=False, include_path=include_path)
    if all(name in local.all_tasks for name in named):
        return local
    manager = TaskManager(include_defaults=True, include_path=include_path)
    unknown = [name for name in named if name not in manager.all_tasks]
    if unknown:
        raise ConfigError("eval.lm_eval.tasks", f"unknown lm-eval task(s) {unknown}; see `lm-eval ls tasks`")
    return manager


def metric_for(task: str, metrics: Mapping[str, float]) -> str | None:
    """The accuracy metric reported for `task` (see the module docstring), or None if it has none."""
    preferred = ("acc_norm", "acc") if task in ACC_NORM_TASKS else ("acc", "acc_norm")
    return next((metric for metric in preferred if metric in metrics), None)


def _task_metrics(results: Mapping[str, Any], groups: set[str]) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from lm-eval's "results" block, keeping unfiltered ("none") values and
    dropping stderr entries and group aggregates."""
    tasks = {}
    for task, entries in results.items():
        if task in groups:
            continue
        metrics = {}
        for key, value in entries.items():
            metric, _, filter_name = key.partition(",")
            if filter_name == "none" and not metric.endswith("_stderr") and isinstance(value, (int, float)):
                metrics[metric] = float(value)
        tasks[task] = metrics
    return tasks


def _plain_tasks(tasks) -> list[str | dict]:
    if isinstance(tasks, (str, Mapping)) or not tasks:
        raise ConfigError(
            "eval.lm_eval.tasks", f"must be a non-empty list of task names or task dicts, got {tasks!r}"
        )
    return [task if isinstance(task, str) else dict(task) for task in tasks]


def run_lm_eval(
    model,
    tokenizer,
    *,
    tasks: Sequence[str | Mapping],
    batch_size: int,
    max_length: int,
    limit: int | float | None = None,
    num_fewshot: int = 0,
    include_path: str | None = None,
) -> dict[str, Any]:
    """Evaluate `model` (a transformers PreTrainedModel, already on its device) on `tasks`.

    Tasks are lm-eval names (e.g. "hellaswag"), names defined by YAML files under `include_path`, or
    inline task-config dicts. Returns {"tasks": {task: {metric: value}}, "metric_used": {task: metric},
    "avg_acc": float | None}. The model's train/eval mode is restored afterwards.
    """
    simple_evaluate, HFLM, TaskManager = _import_lm_eval()
    tasks = _plain_tasks(tasks)
    was_training = model.training
    try:
        manager = _task_manager(TaskManager, tasks, include_path)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
        output = {"results": {}, "group_subtasks": {}}
        for task in tasks:  # one task at a time, so that each wait is named
            with status(f"lm-eval: {task if isinstance(task, str) else task.get('task', 'inline task')}"):
                one = simple_evaluate(
                    model=lm,
                    tasks=[task],
                    num_fewshot=num_fewshot,
                    limit=limit,
                    task_manager=manager,
                    bootstrap_iters=0,
                    log_samples=False,
                )
            output["results"].update(one["results"])
            output["group_subtasks"].update(one.get("group_subtasks") or {})
    except ConnectionError as error:
        raise ConfigError(
            "eval.lm_eval.tasks",
            f"task data could not be fetched ({error}); run once online to fill the Hugging Face cache, "
            "or use local tasks (eval=lm_eval_local with eval.lm_eval.include_path=<dir>)",
        ) from error
    finally:
        model.train(was_training)
    groups = {group for group, members in output.get("group_subtasks", {}).items() if members}
    per_task = _task_metrics(output["results"], groups)
    metric_used = {
        task: metric for task, metrics in per_task.items() if (metric := metric_for(task, metrics))
    }
    accuracies = [per_task[task][metric] for task, metric in metric_used.items()]
    return {
        "tasks": per_task,
        "metric_used": metric_used,
        "avg_acc": sum(accuracies) / len(accuracies) if accuracies else None,
    }
