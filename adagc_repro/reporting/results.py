"""Read results/ into one pandas row per run.

Layout (see the project contract and adagc_repro.runs): `results/runs/<run_id>/{config.yaml, summary.json,
eval.json, DONE|FAILED}` and `results/sweeps/<sweep_id>/manifest.json`. Only runs with a DONE marker become
table rows; failed, running and partial runs are counted so that tables can say how many were left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from adagc_repro import runs as run_files
from adagc_repro.config import content_hash, setting_view
from adagc_repro.errors import ConfigError

# clip.name -> method name as the papers write it. Optimizers that clip or reset inside the update
# (StableAdamW, SPAM, Clippy) are recognised from optim.name instead.
METHOD_BY_CLIP = {
    "none": "NoClip",
    "global": "GlobalGC",
    "local": "LocalGC",
    "adagc_global": "AdaGC-global",
    "adagc": "AdaGC",
    "zclip": "ZClip",
    "aggc": "AGGC",
    "agc": "AGC",
    "autoclip": "AutoClip",
    "skip_step": "SkipStep",
}
UPDATE_CLIPPING_OPTIMIZERS = {
    "stableadamw": "StableAdamW",
    "spam": "SPAM",
    "stable_spam": "Stable-SPAM",
    "clippy_adamw": "Clippy",
}


def method_name(clip: str | None, optim: str | None) -> str:
    """Paper name of a (clipper, optimizer) pair, e.g. ('global', 'adamw') -> 'GlobalGC'."""
    clip_label = METHOD_BY_CLIP.get(clip, clip or "NoClip")
    if optim in UPDATE_CLIPPING_OPTIMIZERS:
        optim_label = UPDATE_CLIPPING_OPTIMIZERS[optim]
        return optim_label if clip_label == "NoClip" else f"{optim_label}+{clip_label}"
    return clip_label


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become tuples so that rows can be grouped on them."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list):
            flat[name] = tuple(value)
        else:
            flat[name] = value
    return flat


def _read_json(path: Path) -> dict[str, Any]:
    return run_files.read_json(path) if path.exists() else {}


# The C loader (when PyYAML was built with libyaml) reads a config.yaml about 10x faster.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = str(exc).splitlines()[0]
        raise ConfigError(str(path), f"not valid YAML ({reason}); delete or restore the file") from None


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """A run's resolved config.yaml as plain dicts ({} when it is missing)."""
    return _read_yaml(Path(run_dir) / "config.yaml")


def load_manifests(results_root: Path) -> list[dict[str, Any]]:
    return [run_files.read_json(path) for path in sorted(Path(results_root).glob("sweeps/*/manifest.json"))]


def sweep_run_ids(results_root: Path, sweep: str) -> list[str]:
    return [entry["run_id"] for entry in run_files.read_manifest(Path(results_root), sweep).get("runs", [])]


@dataclass(frozen=True)
class RunSelection:
    """Which runs a table reads: all, one sweep, or the runs of some experiments."""

    sweep: str | None = None
    experiments: tuple[str, ...] = ()

    def run_ids(self, results_root: Path) -> set[str] | None:
        """Run ids named by sweep manifests (None: no restriction from manifests)."""
        if self.sweep is not None:
            return set(sweep_run_ids(results_root, self.sweep))
        if self.experiments:
            return {
                entry["run_id"]
                for manifest in load_manifests(results_root)
                if manifest.get("experiment") in self.experiments
                for entry in manifest.get("runs", [])
            }
        return None

    def accepts(self, run_id: str, experiment: str | None, listed: set[str] | None) -> bool:
        if self.sweep is not None:
            return run_id in (listed or set())
        if self.experiments:
            return experiment in self.experiments or run_id in (listed or set())
        return True


def _selection(sweep: str | None, experiment: str | Iterable[str] | None) -> RunSelection:
    names = (experiment,) if isinstance(experiment, str) else tuple(experiment or ())
    return RunSelection(sweep=sweep, experiments=names)


def _run_experiment(config: Mapping[str, Any], summary: Mapping[str, Any]) -> str | None:
    return (config.get("meta") or {}).get("experiment") or summary.get("experiment")


@dataclass(frozen=True)
class _RunFiles:
    run_dir: Path
    status: str
    config: dict[str, Any]
    summary: dict[str, Any]


def _scan(results_root: Path, sweep: str | None, experiment: str | Iterable[str] | None) -> list[_RunFiles]:
    selection = _selection(sweep, experiment)
    listed = selection.run_ids(Path(results_root))
    found = []
    for run_dir in run_files.all_runs(Path(results_root)):
        config = _read_yaml(run_dir / "config.yaml")
        summary = _read_json(run_dir / "summary.json")
        if selection.accepts(run_dir.name, _run_experiment(config, summary), listed):
            found.append(_RunFiles(run_dir, run_files.status_of(run_dir), config, summary))
    return found


def scan_runs(
    results_root: Path, *, sweep: str | None = None, experiment: str | Iterable[str] | None = None
) -> pd.DataFrame:
    """Every selected run folder with its status (done, failed, running, partial) and error line."""
    rows = [
        {
            "run_id": run.run_dir.name,
            "status": run.status,
            "experiment": _run_experiment(run.config, run.summary),
            "error": run_files.first_error_line(run.run_dir) or None,
            "run_dir": str(run.run_dir),
        }
        for run in _scan(results_root, sweep, experiment)
    ]
    return pd.DataFrame(rows, columns=["run_id", "status", "experiment", "error", "run_dir"])


def _task_accuracies(evaluation: Mapping[str, Any]) -> dict[str, float]:
    """acc.<task>: the metric lm-eval reported as the task's accuracy (metric_used, else acc_norm, else acc)."""
    lm_eval = evaluation.get("lm_eval") or {}
    used = lm_eval.get("metric_used") or {}
    accuracies = {}
    for task, metrics in (lm_eval.get("tasks") or {}).items():
        metric = used.get(task) or ("acc_norm" if "acc_norm" in metrics else "acc")
        if metrics.get(metric) is not None:
            accuracies[f"acc.{task}"] = metrics[metric]
    return accuracies


def _run_row(run: _RunFiles) -> dict[str, Any]:
    run_dir, config, summary = run.run_dir, run.config, run.summary
    evaluation = _read_json(run_dir / "eval.json")
    row: dict[str, Any] = flatten(config)
    row.update(flatten(summary))
    eval_step = evaluation.pop("step", None)
    row.update(flatten(evaluation))
    row.update(_task_accuracies(evaluation))
    row["eval.step"] = eval_step
    row["run_id"] = run_dir.name
    row["run_dir"] = str(run_dir)
    row["meta.experiment"] = _run_experiment(config, summary)
    row["meta.table"] = (config.get("meta") or {}).get("table") or summary.get("table")
    clip = (config.get("clip") or {}).get("name") or summary.get("clip")
    optim = (config.get("optim") or {}).get("name") or summary.get("optim")
    row["method"] = method_name(clip, optim)
    setting = setting_view(config)
    row["setting"] = content_hash(setting)  # equal for the seeds of one setting, different otherwise
    row["setting.config"] = flatten(setting)
    return row


def load_runs(
    results_root: Path, *, sweep: str | None = None, experiment: str | Iterable[str] | None = None
) -> pd.DataFrame:
    """One row per finished (DONE) run: config, summary and eval.json flattened with dotted names.

    Columns include `run_id`, `method` (paper name), `model.name`, `clip.name`, `optim.name`, `optim.lr`,
    `clip.lambda_rel`, `seed`, `steps`, `final_train_loss`, `val_loss`, `val_ppl`,
    `spike_score.<preset>.{loss,grad_norm,any,counts.*,definition}`, `meta.experiment`, `meta.table`,
    `meta.scale`, `wikitext.ppl`, `lm_eval.tasks.<task>.<metric>`, `lm_eval.avg_acc` and `acc.<task>`;
    `setting` names what the run computes apart from its seed (the config hash without seed, logging and
    path keys) and `setting.config` holds that config flattened, for the tables' varying-key columns.
    `experiment` may be one name or several (a table can read the runs of several experiments).
    """
    done = [run for run in _scan(results_root, sweep, experiment) if run.status == "done"]
    frame = pd.DataFrame([_run_row(run) for run in done])
    return frame.sort_values("run_id", ignore_index=True) if len(frame) else frame


def excluded_counts(results_root: Path, *, sweep: str | None = None, experiment=None) -> dict[str, int]:
    """How many selected runs are not in the tables, by status (failed, running, partial)."""
    statuses = [run.status for run in _scan(results_root, sweep, experiment)]
    return {
        status: statuses.count(status) for status in ("failed", "running", "partial") if status in statuses
    }
