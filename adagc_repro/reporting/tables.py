"""Tables from the run rows of `results.load_runs`: the all-runs table and the papers' tables.

Paper tables group runs by the table's axes (keys), report mean ± std (n) over seeds per cell, mark
significance against GlobalGC in the same group (Welch's t-test, see stats.py), and put the papers'
numbers (reported.json) in "reported" columns beside them; † marks a secondary-source number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from adagc_repro.errors import ConfigError
from adagc_repro.reporting import DEFAULT_SPIKE_PRESET
from adagc_repro.reporting import reported as paper
from adagc_repro.reporting.formats import MISSING, SECONDARY_MARK, Column, ReportedCell, StatCell, Table
from adagc_repro.reporting.stats import TEST_DESCRIPTION, significance_mark, summarize, welch_t_test

BASELINE = "GlobalGC"
# Papers list the baseline first and AdaGC last; unknown methods go in between, alphabetically.
METHOD_ORDER = [
    "NoClip",
    "GlobalGC",
    "ClipByValue",
    "LocalGC",
    "AdaGC-global",
    "ZClip",
    "AutoClip",
    "AGC",
    "AGGC",
    "SkipStep",
    "SPAM",
    "Stable-SPAM",
    "Clippy",
    "StableAdamW",
    "AdaGC",
]
OPTIMIZER_NAMES = {"adamw": "AdamW", "lion": "Lion", "muon": "Muon", "stableadamw": "StableAdamW"}
LOCALITY = {
    "GlobalGC": ("global", "fixed"),
    "LocalGC": ("per tensor", "fixed"),
    "AdaGC-global": ("global", "adaptive (EMA)"),
    "AdaGC": ("per tensor", "adaptive (EMA)"),
}
SPIKE_SERIES = ("loss", "grad_norm", "any")


# ----------------------------------------------------------------------------------------- values
def _value(row: pd.Series, column: str) -> Any:
    value = row.get(column)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def lr_label(lr: Any) -> str:
    """1e-3 -> '1e-3', 7e-4 -> '7e-4' (how the papers write learning rates)."""
    if lr is None:
        return MISSING
    short = f"{float(lr):.0e}"
    if float(short) != float(lr):
        return f"{float(lr):g}"
    mantissa, exponent = short.split("e")
    return f"{mantissa}e{int(exponent)}"


def number_label(value: Any) -> str:
    """2.0 -> '2.0', 1.04 -> '1.04' (shortest text that reads back as the same float)."""
    return MISSING if value is None else str(float(value))


ALL_PRESETS = "all"


def spike_presets(runs: pd.DataFrame, chosen: str = ALL_PRESETS) -> list[str]:
    """Spike-score presets in the runs' summaries (columns spike_score.<preset>.any): all, or the chosen one."""
    names = sorted({c.split(".")[1] for c in runs.columns if c.startswith("spike_score.") and c.endswith(".any")})
    if chosen == ALL_PRESETS or not names:
        return names
    if chosen not in names:
        raise ConfigError("--spike", f"no run has the spike preset '{chosen}'", [*names, ALL_PRESETS])
    return [chosen]


def spike_definitions(runs: pd.DataFrame, presets: Sequence[str]) -> list[str]:
    notes = []
    for preset in presets:
        definitions = runs.get(f"spike_score.{preset}.definition", pd.Series(dtype=object)).dropna().unique()
        text = "; ".join(map(str, definitions)) if len(definitions) else "definition not recorded"
        notes.append(f"Spike definition '{preset}': {text}.")
    return notes


def excluded_note(excluded: dict[str, int]) -> list[str]:
    if not excluded:
        return []
    parts = ", ".join(f"{count} {status}" for status, count in sorted(excluded.items()))
    return [f"Not in this table: {parts} run(s) (no DONE marker)."]


# ------------------------------------------------------------------------------ varying config keys
def varying_keys(configs: Sequence[dict], shown: Sequence[str] = ()) -> list[str]:
    """Config keys (dotted) whose value differs between flattened configs, apart from the `shown` keys.

    A key under a group that has a name (model.*, clip.*, optim.*, schedule.*, data.*) is left out when
    the group's name alone determines it, e.g. clip.beta when every AdaGC run has the same β: the name's
    column (or its own varying column) already tells those runs apart.
    """
    keys = sorted({key for config in configs for key in config})
    varying = []
    for key in keys:
        if key in shown or len({repr(c.get(key)) for c in configs}) < 2:
            continue
        selector = f"{key.split('.')[0]}.name"
        if key != selector and selector in keys and determined_by(configs, key, selector):
            continue
        varying.append(key)
    return varying


def run_configs(runs: pd.DataFrame) -> list[dict]:
    """The runs' configs without seed, logging and path keys, flattened (results.load_runs' setting.config)."""
    return list(runs["setting.config"]) if "setting.config" in runs else []


def determined_by(configs: Sequence[dict], key: str, selector: str) -> bool:
    """True when every config with the same `selector` value has the same `key` value."""
    seen: dict[str, str] = {}
    return all(seen.setdefault(repr(c.get(selector)), repr(c.get(key))) == repr(c.get(key)) for c in configs)


def config_label(value: Any) -> str:
    """A config value as a table cell: floats shortest, lists in brackets, absent keys as –."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(config_label(v) for v in value) + "]"
    return str(value)


def _config_value(run: pd.Series, key: str) -> str:
    config = run.get("setting.config")
    return config_label(config.get(key)) if isinstance(config, dict) else MISSING


# --------------------------------------------------------------------------------- all-runs tables
RUN_IDENTITY = ("model.name", "clip.name", "optim.name")


def evaluation_metrics(runs: pd.DataFrame) -> list[Metric]:
    """WikiText perplexity and bits per byte, lm-eval accuracy per task and their mean (eval.json)."""
    tasks = sorted(c.split(".", 1)[1] for c in runs.columns if c.startswith("acc."))
    return [
        Metric("WikiText ppl", "wikitext.ppl", 2),
        Metric("WikiText bits/byte", "wikitext.bits_per_byte", 4),
        *(Metric(f"{task} %", f"acc.{task}", 2, scale=100.0) for task in tasks),
        Metric("Avg acc %", "lm_eval.avg_acc", 2, scale=100.0),
    ]


def overview_metrics(runs: pd.DataFrame, presets: Sequence[str]) -> list[Metric]:
    metrics = [
        Metric("Steps", "steps", 0, spread=False),
        Metric("Final train loss", "final_train_loss", 3),
        Metric("Val loss", "val_loss", 3),
        Metric("Val ppl", "val_ppl", 2),
        *evaluation_metrics(runs),
    ]
    return metrics + [
        Metric(f"Spike % {series} ({preset})", f"spike_score.{preset}.{series}", 4)
        for preset in presets
        for series in SPIKE_SERIES
    ]


def overview_table(
    runs: pd.DataFrame, excluded: dict[str, int], title: str = "All runs", name: str = "runs",
    spike: str = DEFAULT_SPIKE_PRESET,
) -> Table:
    """One row per setting: mean ± std (n) over its seeds, Welch's test against GlobalGC at that setting."""
    presets = spike_presets(runs, spike)
    caption = (
        f"{len(runs)} finished run(s), mean ± std (n) over the seeds of one setting; a column for every "
        f"config key that varies. Spike scores are % of all training steps. {TEST_DESCRIPTION}."
    )
    return grouped_table(
        name, title, runs, [_model_key(), _method_key()], overview_metrics(runs, presets), None, caption,
        spike_definitions(runs, presets) + excluded_note(excluded),
    )


def runs_table(
    runs: pd.DataFrame, excluded: dict[str, int], title: str = "All runs", name: str = "runs",
    spike: str = DEFAULT_SPIKE_PRESET,
) -> Table:
    """One row per finished run (--per-run): ids, setting, losses, evaluation and spike scores."""
    presets = spike_presets(runs, spike)
    varying = varying_keys(run_configs(runs), RUN_IDENTITY)
    metrics = [m for m in overview_metrics(runs, presets)[1:] if _has_data(runs, m.column)]
    columns = [Column("run id"), Column("model"), Column("clip"), Column("optim"), Column("seed"), Column("steps")]
    columns += [Column(key) for key in varying]
    columns += [Column(m.label, digits=m.digits) for m in metrics]
    rows = []
    for _, run in runs.iterrows():
        row = [
            run["run_id"],
            _value(run, "model.name") or _value(run, "model"),
            _value(run, "clip.name") or _value(run, "clip"),
            _value(run, "optim.name") or _value(run, "optim"),
            _value(run, "seed"),
            _value(run, "steps"),
        ]
        row += [_config_value(run, key) for key in varying]
        row += [_scaled(_value(run, m.column), m.scale) for m in metrics]
        rows.append(row)
    caption = f"{len(runs)} finished run(s), one row each. Spike scores are % of all training steps."
    return Table(
        name, title, columns, rows, caption, spike_definitions(runs, presets) + excluded_note(excluded)
    )


def _scaled(value: Any, scale: float) -> Any:
    return value * scale if isinstance(value, int | float) and scale != 1.0 else value


# ------------------------------------------------------------------------------ grouped tables
@dataclass(frozen=True)
class Key:
    """A grouping axis: its label in a run row, and the reported.json field it joins on (if any).

    `describes_method=True` marks an axis that is a property of the method (ZClip's z_thres, locality),
    so the GlobalGC baseline of a group is found without it.
    """

    label: str
    of_run: Callable[[pd.Series], str]
    reported: str | None = None
    of_reported: Callable[[Any], str] = lambda value: MISSING if value is None else str(value)
    describes_method: bool = False
    config_key: str | None = None  # the config key the axis shows, so it gets no varying-key column
    shows: tuple[str, ...] = ()  # other config keys the axis's label fixes: no varying-key columns either


@dataclass(frozen=True)
class Metric:
    """A cell value: mean ± std (n) of `column` (times `scale`), optionally with a reported column beside it.

    `column=None` gives a reported-only column. `spread=False` shows one value (or a min–max range)
    instead of a statistic, for things like the number of steps.
    """

    label: str
    column: str | None
    digits: int
    scale: float = 1.0
    reported: str | None = None
    reported_digits: int | None = None
    spread: bool = True


def _model_key() -> Key:
    return Key(
        "Model",
        lambda run: paper.paper_model_name(_value(run, "model.name") or _value(run, "model")),
        "model",
        config_key="model.name",
    )


def _method_key() -> Key:
    return Key("Method", lambda run: run["method"], "method", config_key="clip.name")


def _lr_key() -> Key:
    return Key("LR", lambda run: lr_label(_value(run, "optim.lr")), "lr", lr_label, config_key="optim.lr")


def _order(label: str, value: str) -> tuple:
    if label == "Method":
        return (METHOD_ORDER.index(value) if value in METHOD_ORDER else len(METHOD_ORDER) / 2, value)
    if label == "Model":
        names = list(paper.load_reported()["models"].values())
        return (names.index(value) if value in names else len(names), value)
    if label == "LR":
        return (-float(value) if value != MISSING else 0.0, value)
    return (0, value)


def _reported_lookup(keys: Sequence[Key], rows: list[dict]) -> dict[tuple, dict]:
    joined = [key for key in keys if key.reported]
    return {tuple(key.of_reported(row.get(key.reported)) for key in joined): row for row in rows}


def _has_data(runs: pd.DataFrame, column: str) -> bool:
    return column in runs.columns and bool(runs[column].notna().any())


def _stat_cell(values: list[float], baseline: list[float] | None, metric: Metric, is_baseline: bool) -> Any:
    summary = summarize([v * metric.scale for v in values if v is not None])
    if summary is None:
        return None
    if not metric.spread:
        low, high = (
            min(v * metric.scale for v in values if v is not None),
            max(v * metric.scale for v in values if v is not None),
        )
        return (
            f"{low:.{metric.digits}f}" if low == high else f"{low:.{metric.digits}f}–{high:.{metric.digits}f}"
        )
    test = None if is_baseline or baseline is None else welch_t_test(values, baseline)
    p = test.p if test else None
    return StatCell(summary.mean, summary.std, summary.n, metric.digits, p, significance_mark(p))


def _reported_cell(reported_row: dict | None, metric: Metric) -> ReportedCell | None:
    if reported_row is None or reported_row.get(metric.reported) is None:
        return None
    digits = metric.reported_digits if metric.reported_digits is not None else metric.digits
    return ReportedCell(
        float(reported_row[metric.reported]), digits, reported_row["source"], bool(reported_row["secondary"])
    )


def grouped_table(
    name: str,
    title: str,
    runs: pd.DataFrame,
    keys: Sequence[Key],
    metrics: Sequence[Metric],
    table_kind: str | None,
    caption: str,
    notes: Sequence[str] = (),
) -> Table:
    """One row per setting (runs that differ only in seed), plus rows for reported settings without runs.

    Rows are labelled by `keys`, then by a column for every other config key that varies between the runs
    (see `varying_keys`); runs whose configs differ in anything but the seed are never pooled.
    """
    keys = [*keys, *(Key(key, lambda run, key=key: _config_value(run, key), config_key=key)
                     for key in varying_keys(run_configs(runs), [c for k in keys for c in (k.config_key, *k.shows) if c]))]
    reported_rows = paper.reported_rows(table_kind) if table_kind else []
    lookup = _reported_lookup(keys, reported_rows)
    joined = [i for i, key in enumerate(keys) if key.reported]
    method_index = next((i for i, key in enumerate(keys) if key.label == "Method"), None)
    reported_metrics = {
        m.reported
        for m in metrics
        if m.reported and any(r.get(m.reported) is not None for r in reported_rows)
    }
    # A metric without data in any run is left out, unless the paper reports it (its row then reads "–").
    metrics = [
        m for m in metrics if m.column is None or _has_data(runs, m.column) or m.reported in reported_metrics
    ]

    # The last element of a group key is the setting: it keeps apart runs the visible columns cannot.
    groups: dict[tuple, list[pd.Series]] = {}
    for _, run in runs.iterrows():
        labels = tuple(str(key.of_run(run)) for key in keys)
        groups.setdefault((*labels, str(run.get("setting", ""))), []).append(run)

    def values(group_key: tuple, metric: Metric) -> list[float]:
        return [_value(run, metric.column) for run in groups.get(group_key, [])]

    # GlobalGC "at the same setting": equal on every axis except the method's own and the clipper's keys.
    setting = [
        i
        for i, key in enumerate(keys)
        if i != method_index and not key.describes_method and not (key.config_key or "").startswith("clip.")
    ]

    def baseline_values(group_key: tuple, metric: Metric) -> list[float] | None:
        """The metric over the GlobalGC runs of the same setting (None if there are none)."""
        if method_index is None:
            return None
        same = [
            other
            for other in groups
            if other[method_index] == BASELINE and all(other[i] == group_key[i] for i in setting)
        ]
        return [value for other in same for value in values(other, metric)] or None

    for reported_key in lookup:  # reported settings without runs still get a row
        if not any(tuple(gk[i] for i in joined) == reported_key for gk in groups):
            group_key = [MISSING] * len(keys) + [""]
            for i, value in zip(joined, reported_key, strict=True):
                group_key[i] = value
            groups.setdefault(tuple(group_key), [])

    columns = [Column(key.label) for key in keys]
    for metric in metrics:
        if metric.column is not None:
            columns.append(Column(metric.label, "stat" if metric.spread else "value"))
        if metric.reported in reported_metrics:
            columns.append(
                Column(f"{metric.label} (reported)" if metric.column else metric.label, "reported")
            )

    rows = []
    for group_key in sorted(
        groups, key=lambda gk: [_order(key.label, v) for key, v in zip(keys, gk, strict=False)] + [gk[-1]]
    ):
        reported_row = lookup.get(tuple(group_key[i] for i in joined))
        is_baseline = method_index is not None and group_key[method_index] == BASELINE
        row: list[Any] = list(group_key[:-1])
        for metric in metrics:
            if metric.column is not None:
                baseline = baseline_values(group_key, metric)
                row.append(_stat_cell(values(group_key, metric), baseline, metric, is_baseline))
            if metric.reported in reported_metrics:
                row.append(_reported_cell(reported_row, metric))
        rows.append(row)

    return Table(
        name,
        title,
        columns,
        rows,
        caption,
        [*notes, *_reported_footnotes(reported_rows, reported_metrics, table_kind)],
    )


def _reported_footnotes(rows: list[dict], used: set[str], table_kind: str | None) -> list[str]:
    notes = list(paper.reported_notes(table_kind)) if table_kind else []
    if not used:
        return notes
    sources = sorted({row["source"] for row in rows})
    notes += [f"Reported values: {paper.source_description(source)}." for source in sources]
    if any(row["secondary"] for row in rows):
        notes.append(f"{SECONDARY_MARK} secondary source: not checked against the paper PDF.")
    return notes


# --------------------------------------------------------------------------------- paper tables
@dataclass(frozen=True)
class Context:
    """What a paper table states about where its runs come from."""

    experiments: tuple[str, ...]  # the run groups the table reads
    excluded: dict[str, int]
    spike: str = DEFAULT_SPIKE_PRESET  # the spike preset(s) the table shows: a preset name or "all"

    def caption(self, runs: pd.DataFrame, setting: str) -> str:
        scales = sorted(set(runs["meta.scale"].dropna())) if "meta.scale" in runs else []
        models = sorted(set(runs["model.name"].dropna())) if "model.name" in runs else []
        scale = f" at scale {', '.join(scales)}" if scales else ""
        model = f" (models: {', '.join(models)})" if models else ""
        reported_setting = f" Reported: {setting}." if setting else ""
        noun = "experiment" if len(self.experiments) == 1 else "experiments"
        return (
            f"This run: {noun} {', '.join(self.experiments)}{scale}{model}, {len(runs)} run(s), mean ± std (n) "
            f"over the seeds of one setting. {TEST_DESCRIPTION}.{reported_setting}"
        )


def _setting(kind: str) -> str:
    return paper.load_reported()["tables"].get(kind, {}).get("setting", "")


def _spike_rows(runs: pd.DataFrame, presets: Sequence[str]) -> pd.DataFrame:
    """One row per (run, spike preset) with generic spike columns, so presets become a table axis."""
    frames = []
    for preset in presets:
        frame = runs.copy()
        frame["spike.preset"] = preset
        for series in SPIKE_SERIES:
            frame[f"spike.count.{series}"] = runs.get(f"spike_score.{preset}.counts.{series}")
            frame[f"spike.score.{series}"] = runs.get(f"spike_score.{preset}.{series}")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else runs


def spike_table(runs: pd.DataFrame, context: Context) -> list[Table]:
    presets = spike_presets(runs, context.spike)
    keys = [
        _model_key(),
        _method_key(),
        Key("Spike definition", lambda run: run.get("spike.preset", MISSING)),
    ]
    metrics = [Metric("Steps", "steps", 0, reported="steps", spread=False)]
    metrics += [Metric(f"Spikes {s}", f"spike.count.{s}", 2) for s in ("loss", "grad_norm")]
    metrics += [Metric("Spikes any", "spike.count.any", 2, reported="spikes", reported_digits=0)]
    metrics += [Metric(f"Score % {s}", f"spike.score.{s}", 4) for s in ("loss", "grad_norm")]
    metrics += [Metric("Score % any", "spike.score.any", 4, reported="spike_score")]
    table = grouped_table(
        "table_spike",
        "Loss-spike counts and spike scores",
        _spike_rows(runs, presets),
        keys,
        metrics,
        "spike",
        context.caption(runs, _setting("spike")),
        spike_definitions(runs, presets) + excluded_note(context.excluded),
    )
    return [table]


def _eval_metrics(runs: pd.DataFrame) -> list[Metric]:
    tasks = sorted(c.split(".", 1)[1] for c in runs.columns if c.startswith("acc."))
    return [Metric(task, f"acc.{task}", 2, scale=100.0) for task in tasks]


def accuracy_table(runs: pd.DataFrame, context: Context) -> list[Table]:
    metrics = _eval_metrics(runs) + [
        Metric("Avg", "lm_eval.avg_acc", 2, scale=100.0, reported="avg_acc"),
        Metric("WikiText ppl", "wikitext.ppl", 2),
    ]
    notes = ["Accuracies in % (lm-eval zero-shot; the metric per task is eval.json's metric_used)."]
    if not _has_data(runs, "lm_eval.avg_acc"):
        notes.append(
            "No run has lm-eval results yet: adagc-repro eval RUN_ID... eval=lm_eval_core adds them."
        )
    table = grouped_table(
        "table_accuracy",
        "Zero-shot accuracy",
        runs,
        [_model_key(), _method_key()],
        metrics,
        "accuracy",
        context.caption(runs, _setting("accuracy")),
        notes + excluded_note(context.excluded),
    )
    return [table]


def _outcome_metrics(runs: pd.DataFrame, context: Context) -> list[Metric]:
    """Average accuracy, losses and the 'any' spike score of every preset."""
    metrics = [
        Metric("Avg acc %", "lm_eval.avg_acc", 2, scale=100.0),
        Metric("Final train loss", "final_train_loss", 3),
        Metric("Val loss", "val_loss", 3),
    ]
    return metrics + [Metric(f"Spike % any ({p})", f"spike_score.{p}.any", 4) for p in spike_presets(runs, context.spike)]


def optimizers_table(runs: pd.DataFrame, context: Context) -> list[Table]:
    optimizer = Key(
        "Optimizer",
        lambda run: OPTIMIZER_NAMES.get(_value(run, "optim.name"), _value(run, "optim.name")),
        config_key="optim.name",
    )
    table = grouped_table(
        "table_optimizers",
        "Optimizer compatibility",
        runs,
        [_model_key(), optimizer, _method_key()],
        _outcome_metrics(runs, context),
        "optimizers",
        context.caption(runs, _setting("optimizers")),
        spike_definitions(runs, spike_presets(runs, context.spike)) + excluded_note(context.excluded),
    )
    return [table]


def locality_table(runs: pd.DataFrame, context: Context) -> list[Table]:
    keys = [
        _model_key(),
        _method_key(),
        Key(
            "Locality", lambda run: LOCALITY.get(run["method"], (MISSING, MISSING))[0], describes_method=True
        ),
        Key(
            "Threshold", lambda run: LOCALITY.get(run["method"], (MISSING, MISSING))[1], describes_method=True
        ),
    ]
    table = grouped_table(
        "table_locality",
        "Locality × adaptivity ablation",
        runs,
        keys,
        _outcome_metrics(runs, context),
        "locality",
        context.caption(runs, _setting("locality")),
        spike_definitions(runs, spike_presets(runs, context.spike)) + excluded_note(context.excluded),
    )
    return [table]


def zclip_lr_table(runs: pd.DataFrame, context: Context) -> list[Table]:
    def z_thresh(run: pd.Series) -> str:
        return number_label(_value(run, "clip.z_thresh")) if run["method"] == "ZClip" else MISSING

    keys = [
        _lr_key(),
        _method_key(),
        Key("z_thres", z_thresh, "z_thresh", number_label, describes_method=True, config_key="clip.z_thresh"),
    ]
    presets = spike_presets(runs, context.spike)
    metrics = [
        Metric("Final train loss", "final_train_loss", 3, reported="final_train_loss", reported_digits=2),
        Metric("HellaSwag %", "acc.hellaswag", 2, scale=100.0, reported="hellaswag"),
        Metric("WinoGrande %", "acc.winogrande", 2, scale=100.0, reported="winogrande"),
    ]
    metrics += [Metric(f"Spikes any ({p})", f"spike_score.{p}.counts.any", 2) for p in presets]
    metrics += [Metric("Spikes (reported)", None, 0, reported="spikes")]
    notes = ["GlobalGC here is ZClip's fixed-threshold baseline (clip at global norm 1.0)."]
    table = grouped_table(
        "table_zclip_lr",
        "Learning-rate sweep: fixed threshold vs ZClip",
        runs,
        keys,
        metrics,
        "zclip_lr",
        context.caption(runs, _setting("zclip_lr")),
        notes + spike_definitions(runs, presets) + excluded_note(context.excluded),
    )
    return [table]


GRID_AXES = ("clip.lambda_rel", "clip.beta")


def grid_tables(runs: pd.DataFrame, context: Context) -> list[Table]:
    """λ_rel (rows) × β (columns) of AdaGC, one table per outcome metric with data.

    Runs that differ in another key make separate grids (named by those keys), so a cell pools only the
    seeds of one setting; the GlobalGC reference is the one equal on every key outside clip.*.
    """
    if not len(runs):
        return []
    others = varying_keys(run_configs(runs), (*GRID_AXES, "clip.name"))
    outside = [key for key in others if not key.startswith("clip.")]
    inside = [key for key in others if key.startswith("clip.")]
    grids: dict[tuple, list[pd.Series]] = {}
    for _, run in runs[runs["method"] == "AdaGC"].iterrows():
        grids.setdefault(tuple(_config_value(run, key) for key in [*outside, *inside]), []).append(run)
    tables = []
    for labels, members in sorted(grids.items()):
        wanted = dict(zip(outside, labels, strict=False))
        baseline = pd.DataFrame([
            run for _, run in runs[runs["method"] == BASELINE].iterrows()
            if all(_config_value(run, key) == label for key, label in wanted.items())
        ])
        suffix = ", ".join(f"{key}={label}" for key, label in zip([*outside, *inside], labels, strict=True))
        tables += _grid_tables_of(pd.DataFrame(members), baseline, context, suffix)
    return tables


def _grid_tables_of(adagc: pd.DataFrame, baseline: pd.DataFrame, context: Context, suffix: str) -> list[Table]:
    tables = []
    for metric in (
        Metric("Avg acc %", "lm_eval.avg_acc", 2, scale=100.0),
        Metric("Val loss", "val_loss", 3),
        Metric("Final train loss", "final_train_loss", 3),
    ):
        if metric.column not in adagc.columns or not adagc[metric.column].notna().any():
            continue
        lambdas = sorted(adagc["clip.lambda_rel"].dropna().unique())
        betas = sorted(adagc["clip.beta"].dropna().unique())
        base_values = [_value(run, metric.column) for _, run in baseline.iterrows()]
        columns = [Column("λ_rel \\ β")] + [Column(f"β = {number_label(b)}", "stat") for b in betas]
        rows = []
        for lam in lambdas:
            row: list[Any] = [f"λ_rel = {number_label(lam)}"]
            for beta in betas:
                cell = adagc[(adagc["clip.lambda_rel"] == lam) & (adagc["clip.beta"] == beta)]
                row.append(
                    _stat_cell(
                        [_value(r, metric.column) for _, r in cell.iterrows()],
                        base_values or None,
                        metric,
                        is_baseline=False,
                    )
                )
            rows.append(row)
        reference = _stat_cell(base_values, None, metric, is_baseline=True)
        notes = [f"{BASELINE} reference (same setting): {reference.text() if reference else 'no runs'}."]
        notes += paper.reported_notes("grid") + excluded_note(context.excluded)
        stem = metric.column.replace(".", "_")
        tables.append(
            Table(
                f"table_grid_{stem}" + (f"_{_slug(suffix)}" if suffix else ""),
                f"AdaGC λ_rel × β grid: {metric.label}" + (f" ({suffix})" if suffix else ""),
                columns,
                rows,
                context.caption(pd.concat([adagc, baseline]), _setting("grid")),
                notes,
            )
        )
    return tables


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")


def spike_lab_tables(runs: pd.DataFrame, context: Context) -> list[Table]:
    from adagc_repro.reporting.spike_lab import spike_lab_tables as build  # it builds on this module

    return build(runs, context)


TABLE_BUILDERS: dict[str, Callable[[pd.DataFrame, Context], list[Table]]] = {
    "spike": spike_table,
    "accuracy": accuracy_table,
    "optimizers": optimizers_table,
    "grid": grid_tables,
    "locality": locality_table,
    "zclip_lr": zclip_lr_table,
    "spike_lab": spike_lab_tables,
}
# The main accuracy table evaluates the same trained models as the spike table, plus its own runs.
EXTRA_SOURCES = {"accuracy": ("table_spike",)}
