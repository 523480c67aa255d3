"""Spike lab: what each injected fault did to a run, how fast the run recovered, and the high-LR study.

Reads summary.json (`faults`: one record per trigger, see adagc_repro.faults) and metrics.jsonl; never
torch. For one trigger of one run, with s its step and o its `observe_from` (the first step whose loss
shows the fault's effect on the model rather than a faulty batch itself):

- trend: least squares fit loss ≈ a + b·ln(step) over the last PRE_WINDOW finite losses before s
- loss after: the loss at step o; loss excess: max over [o, o + HORIZON) of 100·(loss / trend − 1)
- grad norm at: the pre-clip gradient norm at s (gradient faults show there, before clipping);
  grad norm ratio: max pre-clip norm over [s, s + HORIZON) / median norm of the pre-window
- recovery: steps from s to the first step t ≥ o where the mean loss over [max(o, t − SMOOTH + 1), t]
  is at most (1 + TOLERANCE) × trend(t); None ("never") if the run ends first

Runs without faults (the learning-rate study) get a table by learning rate instead.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from adagc_repro.reporting.tables import (
    Context,
    Key,
    Metric,
    _lr_key,
    _method_key,
    _model_key,
    determined_by,
    excluded_note,
    grouped_table,
    spike_definitions,
    spike_presets,
)
from adagc_repro.run_log import read_jsonl

PRE_WINDOW = 50
HORIZON = 10
SMOOTH = 5
TOLERANCE = 0.01
MIN_TREND_POINTS = 5
TRIGGER_KNOBS = ("factor", "bit", "kind")  # the parameter that names a trigger's size in labels


@dataclass(frozen=True)
class Series:
    steps: np.ndarray
    loss: np.ndarray  # NaN where not finite
    grad_norm: np.ndarray


def read_series(run_dir: Path) -> Series:
    lines = [line for line in read_jsonl(Path(run_dir) / "metrics.jsonl") if "loss" in line and "step" in line]

    def column(key: str) -> np.ndarray:
        return np.array([np.nan if line.get(key) is None else line[key] for line in lines], dtype=float)

    return Series(column("step"), column("loss"), column("grad_norm"))


@dataclass(frozen=True)
class Outcome:
    loss_after: float | None
    loss_excess_pct: float | None
    grad_norm_at: float | None
    grad_norm_ratio: float | None
    recovery_steps: int | None  # None: never within the run
    recovered: bool

    def as_row(self) -> dict[str, Any]:
        return {
            "lab.loss_after": self.loss_after,
            "lab.loss_excess_pct": self.loss_excess_pct,
            "lab.grad_norm_at": self.grad_norm_at,
            "lab.grad_norm_ratio": self.grad_norm_ratio,
            "lab.recovery_steps": self.recovery_steps,
            "lab.recovered_pct": 100.0 if self.recovered else 0.0,
        }


def trend(series: Series, step: int) -> tuple[float, float] | None:
    """(a, b) of loss ≈ a + b·ln(step) over the last PRE_WINDOW finite losses before `step`."""
    before = (series.steps < step) & np.isfinite(series.loss)
    steps, loss = series.steps[before][-PRE_WINDOW:], series.loss[before][-PRE_WINDOW:]
    if len(steps) < MIN_TREND_POINTS:
        return None
    slope, intercept = np.polyfit(np.log(steps), loss, 1)
    return float(intercept), float(slope)


def _at(values: np.ndarray, series: Series, step: int) -> float | None:
    hit = np.flatnonzero(series.steps == step)
    return float(values[hit[0]]) if len(hit) and np.isfinite(values[hit[0]]) else None


def outcome(series: Series, step: int, observe_from: int) -> Outcome:
    """The spike-lab measures of one trigger at `step` (see the module docstring)."""
    fit = trend(series, step)
    expected = fit[0] + fit[1] * np.log(series.steps) if fit else np.full(len(series.steps), np.nan)
    window = (series.steps >= observe_from) & (series.steps < observe_from + HORIZON)
    excess = 100.0 * (series.loss[window] / expected[window] - 1.0)
    norms = series.grad_norm[(series.steps >= step) & (series.steps < step + HORIZON)]
    pre_norms = series.grad_norm[series.steps < step][-PRE_WINDOW:]
    pre_median = np.nanmedian(pre_norms) if np.isfinite(pre_norms).any() else math.nan
    peak = np.nanmax(norms) if np.isfinite(norms).any() else math.nan
    recovery = _recovery(series, expected, step, observe_from) if fit else None
    return Outcome(
        loss_after=_at(series.loss, series, observe_from),
        loss_excess_pct=float(np.nanmax(excess)) if np.isfinite(excess).any() else None,
        grad_norm_at=_at(series.grad_norm, series, step),
        grad_norm_ratio=float(peak / pre_median) if pre_median > 0 and np.isfinite(peak) else None,
        recovery_steps=recovery,
        recovered=recovery is not None,
    )


def _recovery(series: Series, expected: np.ndarray, step: int, observe_from: int) -> int | None:
    after = np.flatnonzero(series.steps >= observe_from)
    for position, index in enumerate(after):
        recent = series.loss[after[max(0, position - SMOOTH + 1) : position + 1]]
        recent = recent[np.isfinite(recent)]
        if len(recent) and recent.mean() <= (1.0 + TOLERANCE) * expected[index]:
            return int(series.steps[index]) - step
    return None


def trigger_label(record: dict[str, Any]) -> str:
    """'grad_scale ×100 @120', 'bitflip bit 27 @120', 'data_outlier repeat @120', 'lowp_norm @120'."""
    knob = next((key for key in TRIGGER_KNOBS if key in record), None)
    size = {"factor": lambda v: f" ×{v:g}", "bit": lambda v: f" bit {v}", "kind": lambda v: f" {v}"}
    text = size[knob](record[knob]) if knob else ""
    return f"{record['name']}{text} @{record['step']}"


def trigger_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, trigger): the run's columns, `lab.trigger`, `lab.step` and the Outcome fields."""
    rows = []
    for _, run in runs.iterrows():
        records = run.get("faults")
        if not isinstance(records, tuple) or not records:
            continue
        series = read_series(Path(run["run_dir"]))
        for record in records:
            row = run.to_dict()
            row.update({"lab.trigger": trigger_label(record), "lab.step": record["step"]})
            row.update(outcome(series, int(record["step"]), int(record["observe_from"])).as_row())
            rows.append(row)
    return pd.DataFrame(rows)


SPIKE_PRESET = "olmo_core"  # at small scale instability shows in the grad norm, which this preset catches


def _spike_metrics(runs: pd.DataFrame) -> list[Metric]:
    presets = spike_presets(runs)
    shown = [SPIKE_PRESET] if SPIKE_PRESET in presets else presets
    return [
        Metric(f"Spike % {series} ({preset})", f"spike_score.{preset}.{series}", 3)
        for preset in shown
        for series in ("loss", "grad_norm")
    ]


def _fixed_by_trigger(rows: pd.DataFrame) -> tuple[str, ...]:
    """fault.* keys whose value the trigger label fixes: a column of them would repeat the label."""
    configs = [{**config, "lab.trigger": label} for config, label in zip(rows["setting.config"], rows["lab.trigger"], strict=True)]
    keys = sorted({key for config in configs for key in config if key.startswith("fault.")})
    return tuple(key for key in keys if determined_by(configs, key, "lab.trigger"))


def _trigger_table(rows: pd.DataFrame, runs: pd.DataFrame, context: Context):
    keys = [_model_key(), Key("Trigger", lambda row: row["lab.trigger"], shows=_fixed_by_trigger(rows)), _method_key()]
    metrics = [
        Metric("Loss after", "lab.loss_after", 3),
        Metric(f"Max loss excess % ({HORIZON} steps)", "lab.loss_excess_pct", 2),
        Metric("Grad norm at trigger", "lab.grad_norm_at", 3),
        Metric(f"Grad norm peak / median ({HORIZON} steps)", "lab.grad_norm_ratio", 2),
        Metric("Recovery steps (recovered runs)", "lab.recovery_steps", 1),
        Metric("Recovered %", "lab.recovered_pct", 0),
        Metric("Val loss", "val_loss", 3),
        *_spike_metrics(runs),
    ]
    notes = [
        f"Trend: least squares loss ≈ a + b·ln(step) over the {PRE_WINDOW} steps before the trigger. Recovery: steps "
        f"until the mean loss of the last {SMOOTH} steps is within {TOLERANCE:.0%} of the trend; runs that never "
        "recover count in 'Recovered %' and not in the recovery steps.",
        "Loss after is taken at the first step whose loss shows the fault's effect on the model (the step after a "
        "gradient, LR or data fault; the trigger step itself for low-precision norms).",
    ]
    return grouped_table(
        "spike_lab",
        "Spike lab: response to deterministic triggers",
        rows,
        keys,
        metrics,
        "spike_lab",
        context.caption(runs, ""),
        notes + spike_definitions(runs, spike_presets(runs)) + excluded_note(context.excluded),
    )


def max_grad_norms(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with `lab.max_grad_norm`, the largest pre-clip gradient norm of each run."""
    peaks = [np.nanmax(s.grad_norm) if np.isfinite((s := read_series(Path(d))).grad_norm).any() else None for d in runs["run_dir"]]
    return runs.assign(**{"lab.max_grad_norm": peaks})


def _lr_table(runs: pd.DataFrame, context: Context):
    keys = [_model_key(), _lr_key(), _method_key()]
    metrics = [
        Metric("Val ppl", "val_ppl", 2),
        Metric("Val loss", "val_loss", 3),
        Metric("Final train loss", "final_train_loss", 3),
        Metric("Max pre-clip grad norm", "lab.max_grad_norm", 2),
        *_spike_metrics(runs),
    ]
    return grouped_table(
        "spike_lab_lr",
        "Stability by learning rate",
        max_grad_norms(runs),
        keys,
        metrics,
        "spike_lab",
        context.caption(runs, ""),
        spike_definitions(runs, spike_presets(runs)) + excluded_note(context.excluded),
    )


def spike_lab_tables(runs: pd.DataFrame, context: Context):
    """The trigger table for runs with faults, the learning-rate table for runs without."""
    has_faults = runs["faults"].map(lambda f: isinstance(f, tuple) and bool(f)) if "faults" in runs else pd.Series(False, runs.index)
    tables = []
    if has_faults.any():
        tables.append(_trigger_table(trigger_rows(runs[has_faults]), runs[has_faults], context))
    if (~has_faults).any():
        tables.append(_lr_table(runs[~has_faults], context))
    return tables


# ------------------------------------------------------------------------------------------ figure
def spike_lab_figures(runs: pd.DataFrame, out_dir: Path, before: int = 30, after: int = 60) -> list[tuple[str, Path]]:
    """Per (model, trigger): loss and grad norm from `before` steps before to `after` steps after the
    trigger, mean ± min–max band over seeds, one colour per method. Returns (caption, png) pairs."""
    rows = trigger_rows(runs) if "faults" in runs else pd.DataFrame()
    if len(rows) == 0:
        return []
    from adagc_repro.reporting.plots import method_colours, save_figure

    figures = []
    for index, ((model, label), group) in enumerate(rows.groupby(["model.name", "lab.trigger"], sort=True)):
        figure = _window_figure(group, before, after, method_colours(group["method"]))
        png = save_figure(figure, Path(out_dir), f"spike_lab_{index}")[0]
        seeds = group.groupby("method").size().to_dict()
        figures.append((f"Spike lab, {model}, {label}: mean and min–max over seeds {seeds}", png))
    return figures


def _window_figure(group: pd.DataFrame, before: int, after: int, colours: dict):
    import matplotlib.pyplot as plt

    offsets = np.arange(-before, after + 1)
    figure, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for method, runs in sorted(group.groupby("method"), key=lambda item: list(colours).index(item[0])):
        curves = {"loss": [], "grad_norm": []}
        for _, row in runs.iterrows():
            series = read_series(Path(row["run_dir"]))
            for key in curves:
                aligned = np.full(len(offsets), np.nan)
                values = getattr(series, key)
                for i, offset in enumerate(offsets):
                    hit = np.flatnonzero(series.steps == row["lab.step"] + offset)
                    if len(hit):
                        aligned[i] = values[hit[0]]
                curves[key].append(aligned)
        for ax, key in zip(axes, curves, strict=True):
            stack = np.vstack(curves[key])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns past a run's end
                mean, low, high = np.nanmean(stack, 0), np.nanmin(stack, 0), np.nanmax(stack, 0)
            ax.plot(offsets, mean, color=colours[method], lw=1.2, label=f"{method} (n={len(stack)})")
            ax.fill_between(offsets, low, high, color=colours[method], alpha=0.2, lw=0)
    for ax, label in zip(axes, ("train loss", "grad norm (pre-clip)"), strict=True):
        ax.axvline(0, color="black", lw=0.8, ls="--")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8, loc="upper right")
    axes[1].set_xlabel("steps from the trigger")
    figure.tight_layout()
    return figure
