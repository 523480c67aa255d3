"""Which runs make which table: the experiment files in conf/experiment and the runs they produced.

An experiment file sets `meta.experiment` (the table's run group) and `meta.table` (the table kind).
Several files may feed one group, e.g. the spike table's per-model files all set
`meta.experiment: table_spike`. Runs are found by their config's meta.experiment or through the sweep
manifests that name one of those files.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pandas as pd
import yaml

from adagc_repro.config import conf_dir
from adagc_repro.errors import ConfigError
from adagc_repro.reporting.formats import Table
from adagc_repro.reporting.results import excluded_counts, load_runs
from adagc_repro.reporting.tables import (
    DEFAULT_SPIKE_PRESET,
    EXTRA_SOURCES,
    TABLE_BUILDERS,
    Context,
    runs_table,
)
from adagc_repro.reporting.tables import (
    overview_table as grouped_overview,
)

ALL = "all"


@cache
def catalog() -> dict[str, dict]:
    """Experiment file name -> its meta block (experiment, table, scale)."""
    directory = conf_dir() / "experiment"
    files = sorted(directory.glob("*.yaml")) if directory.is_dir() else []
    return {path.stem: (yaml.safe_load(path.read_text()) or {}).get("meta", {}) for path in files}


def groups() -> dict[str, str]:
    """Run group (meta.experiment) -> table kind, in the order of the papers' tables."""
    found = {meta["experiment"]: meta["table"] for meta in catalog().values() if meta.get("experiment")}
    order = list(TABLE_BUILDERS)
    return dict(sorted(found.items(), key=lambda item: (order.index(item[1]), item[0])))


def resolve(name: str) -> tuple[str, str | None]:
    """experiment=NAME (a file name or a run group) -> (run group, table kind or None if unknown)."""
    if name in catalog():
        meta = catalog()[name]
        return meta.get("experiment") or name, meta.get("table")
    return name, groups().get(name)


def selection_names(group: str, table_kind: str | None) -> tuple[str, ...]:
    """Group names and experiment file names whose runs a table reads."""
    wanted = (group, *EXTRA_SOURCES.get(table_kind, ()))
    files = [file for file, meta in catalog().items() if meta.get("experiment") in wanted]
    return tuple(dict.fromkeys([*wanted, *files]))


def _table_kind(runs: pd.DataFrame, group: str) -> str:
    kinds = sorted(set(runs["meta.table"].dropna())) if "meta.table" in runs else []
    if len(kinds) != 1:
        raise ConfigError(
            "experiment",
            f"cannot tell which table '{group}' is (meta.table of its runs: {kinds})",
            sorted(catalog()),
        )
    return kinds[0]


def experiment_tables(results_root: Path, name: str, spike: str = DEFAULT_SPIKE_PRESET) -> list[Table]:
    """The paper table(s) of one experiment (file name or run group); no finished runs -> no tables."""
    group, kind = resolve(name)
    names = selection_names(group, kind)
    runs = load_runs(results_root, experiment=names)
    excluded = excluded_counts(results_root, experiment=names)
    if len(runs) == 0:
        if kind is None and not excluded:
            raise ConfigError("experiment", f"unknown experiment '{name}'", [*sorted(catalog()), ALL])
        return []
    kind = kind or _table_kind(runs, group)
    if kind not in TABLE_BUILDERS:
        raise ConfigError("meta.table", f"unknown table kind '{kind}'", list(TABLE_BUILDERS))
    groups_read = (group, *EXTRA_SOURCES.get(kind, ()))
    context = Context(experiments=groups_read, excluded=excluded, spike=spike)
    return TABLE_BUILDERS[kind](runs, context)


def all_tables(results_root: Path, spike: str = DEFAULT_SPIKE_PRESET) -> list[Table]:
    return [table for group in groups() for table in experiment_tables(results_root, group, spike)]


def overview_table(
    results_root: Path, sweep: str | None = None, *, per_run: bool = False, spike: str = DEFAULT_SPIKE_PRESET
) -> Table:
    """All runs (or one sweep's): one row per setting with mean ± std over seeds, or one row per run."""
    runs = load_runs(results_root, sweep=sweep)
    excluded = excluded_counts(results_root, sweep=sweep)
    title, name = ("All runs", "runs") if sweep is None else (f"Runs of sweep {sweep}", f"runs_{sweep}")
    build = runs_table if per_run else grouped_overview
    return build(runs, excluded, title=title, name=name, spike=spike)
