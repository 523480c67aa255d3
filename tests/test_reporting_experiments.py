"""Experiment configs: every paper table has runs to read, and every experiment composes at every scale."""

from __future__ import annotations

from pathlib import Path

import pytest

from adagc_repro import launch
from adagc_repro.config import compose, conf_dir
from adagc_repro.reporting import experiments
from adagc_repro.reporting.tables import TABLE_BUILDERS

SCALES = ("paper", "gpu_small", "cpu_tiny")
EXPERIMENTS = sorted(experiments.catalog())
PAPER_ALL = Path(__file__).resolve().parents[1] / "scripts" / "paper_all.sh"


def test_every_paper_table_has_an_experiment():
    groups = experiments.groups()
    assert sorted(set(groups.values())) == sorted(TABLE_BUILDERS)
    for name, meta in experiments.catalog().items():
        assert meta["table"] == groups[meta["experiment"]], f"{name}: one run group, one table kind"
        assert meta["scale"] == "paper", f"{name}: experiment files describe the paper setting"
    assert experiments.resolve("table_spike_qwen3") == ("table_spike", "spike")
    assert experiments.selection_names("table_accuracy", "accuracy")[:2] == ("table_accuracy", "table_spike")


def test_paper_all_runs_every_experiment_in_table_order():
    script = PAPER_ALL.read_text()
    lines = [line.split()[1] for line in script.splitlines() if line.startswith("run ")]
    assert sorted(lines) == EXPERIMENTS
    kinds = [experiments.catalog()[name]["table"] for name in lines]
    assert kinds == sorted(kinds, key=list(TABLE_BUILDERS).index)
    assert "adagc-repro tables experiment=all" in script and "adagc-repro report all" in script


def _covering_jobs(jobs: list[list[str]]) -> list[list[str]]:
    """A few jobs that together hold every axis value (every clipper, optimizer, LR, grid point, seed)."""
    chosen, covered = [], set()
    for job in jobs:
        if not set(job) <= covered:
            chosen.append(job)
            covered |= set(job)
    return chosen


def _check_job(experiment: str, scale: str, job: list[str]) -> None:
    cfg = compose(job)  # validates every group against its builder: no training, no model built
    meta = experiments.catalog()[experiment]
    assert (cfg.meta.experiment, cfg.meta.table, cfg.meta.scale) == (meta["experiment"], meta["table"], scale)
    if scale == "cpu_tiny":
        assert cfg.train.device == "cpu" and cfg.train.steps <= 200 and cfg.data.source == "stdlib_docs"
    if scale == "paper":
        assert cfg.train.batch_size * cfg.train.grad_accum * cfg.train.seq_len >= 4_000_000


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_at_every_scale(experiment, scale):
    """`run -m experiment=... scale=...` expands into jobs; the last one composes and validates."""
    jobs = launch.expand([f"experiment={experiment}", f"scale={scale}"], multirun=True)
    seeds = {o for job in jobs for o in job if o.startswith("seed=")}
    assert len(seeds) >= {"paper": 3, "gpu_small": 3, "cpu_tiny": 2}[scale]
    _check_job(experiment, scale, jobs[-1])


@pytest.mark.slow
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_axis_value_composes(experiment, scale):
    for job in _covering_jobs(launch.expand([f"experiment={experiment}", f"scale={scale}"], multirun=True)):
        _check_job(experiment, scale, job)


def test_scale_group_is_selected_after_the_experiment():
    """A reduced scale must override the experiment's values, so it comes after it in the root defaults."""
    defaults = [next(iter(d)) if isinstance(d, dict) else d for d in _root_defaults()]
    assert "scale" in defaults, "conf/config.yaml must list `- scale: paper` in its defaults"
    assert defaults.index("scale") > defaults.index("experiment")


def _root_defaults() -> list:
    import yaml

    return yaml.safe_load((conf_dir() / "config.yaml").read_text())["defaults"]
