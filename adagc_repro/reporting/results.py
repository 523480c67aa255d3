"""Read results/ into one pandas row per run.

Layout (see the project contract): `results/runs/<run_id>/{config.yaml, summary.json, eval.json, DONE|FAILED}`
and `results/sweeps/<sweep_id>/manifest.json`. Only runs with a DONE marker become table rows; FAILED and
partial (no marker yet) runs are counted so that tables can say how many were left out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from adagc_repro.errors import ConfigError

RUNS_DIR = "runs"
SWEEPS_DIR = "sweeps"

# clip.name -> method name as the papers write it. StableAdamW is an optimizer (update clipping),
# so it is recognised from optim.name instead.
METHOD_BY_CLIP = {
    "none": "NoClip",
    "global": "GlobalGC",
    "local": "LocalGC",
    "adagc_global": "AdaGC-global",
    "adagc": "AdaGC",
    "zclip": "ZClip",
    "aggc": "AGGC",
    "value": "ClipByValue",
    "agc": "AGC",
}
UPDATE_CLIPPING_OPTIMIZERS = {"stableadamw": "StableAdamW"}


def method_name(clip: str | None, optim: str | None) -> str:
    """Paper name of a (clipper, optimizer) pair, e.g. ('global', 'adamw') -> 'GlobalGC'."""
    clip_label = METHOD_BY_CLIP.get(clip, clip or "NoClip")
    if optim in UPDATE_CLIPPING_OPTIMIZERS:
        optim_label = UPDATE_CLIPPING_OPTIMIZERS[optim]
        return optim_label if clip_label == "NoClip" else f"{optim_label}+{clip_label}"
    return clip_label


def run_status(run_dir: Path) -> str:
    if (run_dir / "DONE").exists():
        return "done"
    if (run_dir / "FAILED").exists():
        return "failed"
    return "partial"


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
    return json.loads(path.read_text()) if path.exists() else {}


def _read_yaml(path: Path) -> dict[str, Any]:
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def load_manifests(results_root: Path) -> list[dict[str, Any]]:
    sweeps = Path(results_root) / SWEEPS_DIR
    paths = sorted(sweeps.glob("*/manifest.json")) if sweeps.exists() else []
    return [json.loads(path.read_text()) for path in paths]


def sweep_run_ids(results_root: Path, sweep: str) -> list[str]:
    path = Path(results_root) / SWEEPS_DIR / sweep / "manifest.json"
    if not path.exists():
        known = [m.get("sweep_id") for m in load_manifests(results_root)]
        raise ConfigError(
            "--sweep", f"no manifest for sweep '{sweep}' under {Path(results_root) / SWEEPS_DIR}", known
        )
    return [entry["run_id"] for entry in json.loads(path.read_text()).get("runs", [])]


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


def scan_runs(
    results_root: Path, *, sweep: str | None = None, experiment: str | Iterable[str] | None = None
) -> pd.DataFrame:
    """Every selected run directory with its status (done, failed, partial) and first error line."""
    runs_dir = Path(results_root) / RUNS_DIR
    selection = _selection(sweep, experiment)
    listed = selection.run_ids(Path(results_root))
    rows = []
    for run_dir in sorted(runs_dir.iterdir()) if runs_dir.exists() else []:
        if not run_dir.is_dir():
            continue
        config = _read_yaml(run_dir / "config.yaml")
        summary = _read_json(run_dir / "summary.json")
        exp = _run_experiment(config, summary)
        if not selection.accepts(run_dir.name, exp, listed):
            continue
        error_path = run_dir / "error.txt"
        error = error_path.read_text().strip().splitlines()[:1] if error_path.exists() else []
        rows.append(
            {
                "run_id": run_dir.name,
                "status": run_status(run_dir),
                "experiment": exp,
                "error": error[0] if error else None,
                "run_dir": str(run_dir),
            }
        )
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


def _run_row(run_dir: Path) -> dict[str, Any]:
    config = _read_yaml(run_dir / "config.yaml")
    summary = _read_json(run_dir / "summary.json")
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
    return row


def load_runs(
    results_root: Path, *, sweep: str | None = None, experiment: str | Iterable[str] | None = None
) -> pd.DataFrame:
    """One row per finished (DONE) run: config, summary and eval.json flattened with dotted names.

    Columns include `run_id`, `method` (paper name), `model.name`, `clip.name`, `optim.name`, `optim.lr`,
    `clip.lambda_rel`, `seed`, `steps`, `final_train_loss`, `val_loss`, `val_ppl`,
    `spike_score.<preset>.{loss,grad_norm,any,counts.*,definition}`, `meta.experiment`, `meta.table`,
    `meta.scale`, `wikitext.ppl`, `lm_eval.tasks.<task>.<metric>`, `lm_eval.avg_acc` and `acc.<task>`.
    `experiment` may be one name or several (a table can read the runs of several experiments).
    """
    runs = scan_runs(results_root, sweep=sweep, experiment=experiment)
    done = runs[runs["status"] == "done"]
    frame = pd.DataFrame([_run_row(Path(path)) for path in done["run_dir"]])
    return frame.sort_values("run_id", ignore_index=True) if len(frame) else frame


def excluded_counts(results_root: Path, *, sweep: str | None = None, experiment=None) -> dict[str, int]:
    """How many selected runs are not in the tables, by status (failed, partial)."""
    statuses = scan_runs(results_root, sweep=sweep, experiment=experiment)["status"]
    return {
        status: int((statuses == status).sum())
        for status in ("failed", "partial")
        if (statuses == status).any()
    }
