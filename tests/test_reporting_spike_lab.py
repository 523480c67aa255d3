"""Spike-lab measures on series with a known trend, and the spike_lab tables and figure from run folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from adagc_repro.reporting import experiments
from adagc_repro.reporting.formats import StatCell
from adagc_repro.reporting.results import load_runs
from adagc_repro.reporting.spike_lab import Series, outcome, spike_lab_figures, trend, trigger_label

STEPS = np.arange(1, 201, dtype=float)
FAULT = 100


def clean_loss() -> np.ndarray:
    return 5.0 - 0.5 * np.log(STEPS)


def faulted(excess: dict[int, float], norm_at_fault: float = 50.0) -> Series:
    """The clean curve times (1 + excess[step]); grad norm 1 except at the fault step."""
    loss = clean_loss() * np.array([1.0 + excess.get(int(s), 0.0) for s in STEPS])
    norms = np.ones_like(STEPS)
    norms[FAULT - 1] = norm_at_fault
    return Series(STEPS, loss, norms)


def test_trend_recovers_a_log_linear_curve():
    intercept, slope = trend(Series(STEPS, clean_loss(), np.ones_like(STEPS)), FAULT)
    assert intercept == pytest.approx(5.0) and slope == pytest.approx(-0.5)


def test_a_ten_percent_jump_for_six_steps_recovers_after_eleven():
    series = faulted({step: 0.10 for step in range(101, 107)})
    result = outcome(series, FAULT, observe_from=FAULT + 1)
    assert result.loss_after == pytest.approx(clean_loss()[FAULT] * 1.1)
    assert result.loss_excess_pct == pytest.approx(10.0, abs=1e-6)
    assert result.grad_norm_at == 50.0 and result.grad_norm_ratio == pytest.approx(50.0)
    # The 5-step mean first holds no faulty step at 111 (107..111): 11 steps after the trigger.
    assert result.recovery_steps == 11 and result.recovered


def test_a_lasting_offset_never_recovers_and_a_dip_recovers_at_once():
    lasting = outcome(faulted({step: 0.05 for step in range(101, 201)}), FAULT, FAULT + 1)
    assert lasting.recovery_steps is None and not lasting.recovered
    assert lasting.as_row()["lab.recovered_pct"] == 0.0
    dip = outcome(faulted({101: -0.2}), FAULT, FAULT + 1)
    assert dip.recovery_steps == 1 and dip.loss_excess_pct == pytest.approx(0.0, abs=1e-9)


def test_trigger_labels_name_the_size():
    assert trigger_label({"name": "grad_scale", "step": 120, "factor": 100.0}) == "grad_scale ×100 @120"
    assert trigger_label({"name": "bitflip", "step": 7, "bit": 27}) == "bitflip bit 27 @7"
    assert trigger_label({"name": "data_outlier", "step": 7, "kind": "repeat"}) == "data_outlier repeat @7"
    assert trigger_label({"name": "lowp_norm", "step": 7}) == "lowp_norm @7"


# ------------------------------------------------------------------------------ from run folders
def write_run(root: Path, run_id: str, clip: str, seed: int, stall: int | None, lr: float = 1e-3,
              fault: dict | None = None) -> None:
    """A finished run; with `stall`, a fault (`fault`: its config, grad_scale ×100 by default) at FAULT and a
    10% jump for `stall` steps."""
    run_dir = root / "runs" / run_id
    run_dir.mkdir(parents=True)
    config = {
        "model": {"name": "llama_tiny"},
        "clip": {"name": clip},
        "optim": {"name": "adamw", "lr": lr},
        "meta": {"experiment": "spike_lab", "table": "spike_lab", "scale": "cpu_tiny"},
        "seed": seed,
    }
    fault = fault or {"name": "grad_scale", "factor": 100.0, "tensors": "*"}
    if stall:
        config["fault"] = {fault["name"]: {key: value for key, value in fault.items() if key != "name"} | {"step": FAULT}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    series = faulted({s: 0.10 for s in range(101, 101 + stall)} if stall else {}, 50.0 + seed if stall else 1.0)
    lines = [{"step": int(s), "loss": float(x), "grad_norm": float(g)} for s, x, g in zip(*vars(series).values(), strict=True)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    faults = [{**fault, "step": FAULT, "fired_steps": [FAULT, FAULT], "observe_from": FAULT + 1}]
    summary = {"run_id": run_id, "clip": clip, "seed": seed, "val_loss": 2.5 + seed / 10, "val_ppl": 12.0 + seed, "faults": faults if stall else []}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "DONE").touch()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    for seed in (0, 1):
        write_run(root, f"g{seed}", "global", seed, stall=6 + 2 * seed)  # recovers after 11 and 13 steps
        write_run(root, f"a{seed}", "adagc", seed, stall=100)  # never recovers within the run
        write_run(root, f"l{seed}", "global", seed, stall=None, lr=6e-3)
        write_run(root, f"m{seed}", "adagc", seed, stall=None, lr=6e-3)
    return root


def _cells(table, key_columns: int) -> dict[tuple, dict[str, object]]:
    labels = [c.label for c in table.columns]
    return {tuple(row[:key_columns]): dict(zip(labels, row, strict=True)) for row in table.rows}


def test_trigger_table_one_row_per_trigger_and_method(results):
    trigger_table, lr_table = experiments.experiment_tables(results, "spike_lab")
    assert trigger_table.name == "spike_lab" and lr_table.name == "spike_lab_lr"
    cells = _cells(trigger_table, 3)
    assert set(cells) == {("llama_tiny", "grad_scale ×100 @100", method) for method in ("GlobalGC", "AdaGC")}
    globalgc, adagc = cells[("llama_tiny", "grad_scale ×100 @100", "GlobalGC")], cells[("llama_tiny", "grad_scale ×100 @100", "AdaGC")]
    recovery = globalgc["Recovery steps (recovered runs)"]
    assert isinstance(recovery, StatCell) and (recovery.mean, recovery.n) == (12.0, 2)
    assert globalgc["Recovered %"].mean == 100.0 and adagc["Recovered %"].mean == 0.0
    assert adagc["Recovery steps (recovered runs)"] is None  # "never" leaves no value to average
    assert globalgc["Grad norm at trigger"].mean == pytest.approx(50.5)


def test_lr_table_reads_runs_without_faults(results):
    _, lr_table = experiments.experiment_tables(results, "spike_lab")
    cells = _cells(lr_table, 3)
    assert set(cells) == {("llama_tiny", "6e-3", "GlobalGC"), ("llama_tiny", "6e-3", "AdaGC")}
    assert cells[("llama_tiny", "6e-3", "AdaGC")]["Val ppl"].mean == pytest.approx(12.5)
    assert cells[("llama_tiny", "6e-3", "AdaGC")]["Max pre-clip grad norm"].mean == pytest.approx(1.0)


def test_lr_table_shows_each_lr_once_in_its_own_axis(tmp_path):
    for seed in (0, 1):
        for lr in (6e-3, 1e-3):
            write_run(tmp_path, f"g{lr}-{seed}", "global", seed, stall=None, lr=lr)
    (lr_table,) = experiments.experiment_tables(tmp_path, "spike_lab")
    assert [c.label for c in lr_table.columns[:3]] == ["Model", "LR", "Method"]
    assert not any(c.label == "optim.lr" for c in lr_table.columns)  # the LR axis already tells the rows apart
    assert {row[1] for row in lr_table.rows} == {"6e-3", "1e-3"}


def test_figure_per_trigger_with_one_band_per_method(results, tmp_path):
    figures = spike_lab_figures(load_runs(results, experiment="spike_lab"), tmp_path)
    assert len(figures) == 1
    caption, png = figures[0]
    assert "grad_scale ×100 @100" in caption and "'AdaGC': 2" in caption and png.exists()


def test_fault_settings_get_a_column_only_where_the_trigger_label_does_not_fix_them(tmp_path):
    bitflip = {"name": "bitflip", "bit": 27, "fraction": 1e-5, "tensors": "*"}
    for seed in (0, 1):
        write_run(tmp_path, f"g{seed}", "global", seed, stall=6)
        write_run(tmp_path, f"b{seed}", "global", seed, stall=6, fault=bitflip)
    (table, *_) = experiments.experiment_tables(tmp_path, "spike_lab")
    assert not any(c.label.startswith("fault.") for c in table.columns)  # "bitflip bit 27 @100" says it all
    assert {row[1] for row in table.rows} == {"grad_scale ×100 @100", "bitflip bit 27 @100"}

    for seed in (0, 1):  # the same label, another setting: only a column can tell these rows apart
        write_run(tmp_path, f"q{seed}", "global", seed, stall=6, fault={**bitflip, "tensors": "*.q_proj.*"})
    (table, *_) = experiments.experiment_tables(tmp_path, "spike_lab")
    assert [c.label for c in table.columns if c.label.startswith("fault.")] == ["fault.bitflip.tensors"]
