"""Curves with spike marks, the clip-rate heatmap, and the spike rule the plots use."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from fixtures.reporting_results import SPIKE_STEP, make_results

from adagc_repro.reporting.plots import (
    OLMO_CORE,
    clip_rates,
    curves_figure,
    group_settings,
    plot_clip_heatmap,
    plot_runs,
    read_curves,
    smoothed,
)


@pytest.fixture(scope="module")
def results_root(tmp_path_factory) -> Path:
    return make_results(tmp_path_factory.mktemp("results"))


def test_curves_mark_the_injected_spike(results_root):
    spiky = read_curves(results_root / "runs" / "spike-global-adamw-0")
    calm = read_curves(results_root / "runs" / "spike-adagc-adamw-0")
    for key in ("loss", "grad_norm"):
        assert spiky.steps[spiky.spikes[key]].tolist() == [SPIKE_STEP]
        assert not calm.spikes[key].any()
    assert np.isnan(spiky.series["loss"][10])  # the null loss stays a gap
    assert (spiky.method, calm.method) == ("GlobalGC", "AdaGC")
    assert spiky.spike_rule == "spike (window=50, 6σ, one-sided, >)"  # the run's olmo_core preset


def test_runs_without_presets_are_marked_with_olmo_core_rule(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    values = [1.0 + 0.01 * (i % 7) for i in range(300)]
    values[250] = 9.0
    (run_dir / "metrics.jsonl").write_text(
        "".join(f'{{"step": {i + 1}, "loss": {v}, "grad_norm": 1.0}}\n' for i, v in enumerate(values))
    )
    curves = read_curves(run_dir)
    assert curves.steps[curves.spikes["loss"]].tolist() == [251] and not curves.spikes["grad_norm"].any()
    assert (
        curves.spike_rule == f"spike ({OLMO_CORE.definition().split(', %')[0]})" and curves.method == "NoClip"
    )


def test_plot_runs_one_mean_curve_per_setting_with_a_band_and_colour_per_method(results_root, tmp_path):
    run_dirs = sorted((results_root / "runs").glob("locality-*"))  # 4 methods × 2 seeds
    curves = [read_curves(d) for d in run_dirs]
    figure = curves_figure(curves, log_scale=True)
    for ax, key in zip(figure.axes, ("loss", "grad_norm"), strict=True):
        lines = [line for line in ax.get_lines() if str(line.get_gid()).startswith("series-")]
        assert len(lines) == 4 and len({line.get_color() for line in lines}) == 4
        assert len(ax.collections) >= 4  # a min–max band per setting (plus spike markers)
        assert ax.get_yscale() == "log"
        assert {t.get_text() for t in ax.get_legend().get_texts()} >= {
            "GlobalGC, n=2", "LocalGC, n=2", "AdaGC-global, n=2", "AdaGC, n=2"}
        adagc = next(line for line in lines if line.get_label() == "AdaGC, n=2")
        seeds = [c for c in curves if c.method == "AdaGC"]
        expected = (seeds[0].series[key] + seeds[1].series[key]) / 2
        np.testing.assert_allclose(adagc.get_ydata(), expected)
        assert len({line.get_linestyle() for line in lines}) > 1  # overlapping lines still show
    paths = plot_runs(run_dirs, tmp_path, log_scale=False)
    assert [p.name for p in paths] == ["curves.png", "curves.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = paths[1].read_text()
    for key in ("loss", "grad_norm"):
        assert len(re.findall(rf'id="series-{key}-', svg)) == 4


def test_legend_names_what_tells_settings_of_one_method_apart(results_root):
    run_dirs = sorted((results_root / "runs").glob("zclip_lr-zclip-*"))  # 2 LRs (2 z_thres) × 2 seeds
    labels = [s.label for s in group_settings([read_curves(d) for d in run_dirs])]
    assert labels == ["ZClip (clip.z_thresh=2, optim.lr=0.003), n=2", "ZClip (clip.z_thresh=2.5, optim.lr=0.001), n=2"]


def test_smoothing_is_a_trailing_mean_over_finite_values():
    values = np.array([1.0, 3.0, np.nan, 5.0, 7.0])
    np.testing.assert_allclose(smoothed(values, 2), [1.0, 2.0, np.nan, 5.0, 6.0])
    np.testing.assert_allclose(smoothed(values, 1), values)


def test_plot_and_report_accept_folders(results_root, tmp_path):
    from typer.testing import CliRunner

    from adagc_repro.cli import app

    runner = CliRunner()
    sweep = results_root / "sweeps" / "sweep-spike"
    run = results_root / "runs" / "spike-adagc-adamw-0"
    for target in (sweep, run):
        plotted = runner.invoke(app, ["plot", str(target), "--smooth", "5", "--out", str(tmp_path / target.name)])
        assert plotted.exit_code == 0, plotted.output
        assert (tmp_path / target.name / "curves.png").exists()
        reported = runner.invoke(app, ["report", str(target), "--out", str(tmp_path / f"r-{target.name}")])
        assert reported.exit_code == 0, reported.output
        assert (tmp_path / f"r-{target.name}" / "report.html").exists()
    assert "Sweep sweep-spike" in (tmp_path / "r-sweep-spike" / "report.md").read_text()
    tabled = runner.invoke(app, ["tables", "--sweep", str(sweep), "-f", "csv"])  # --results left at its default
    assert tabled.exit_code == 0 and len(tabled.output.strip().splitlines()) == 1 + 3
    assert "Run spike-adagc-adamw-0" in (tmp_path / f"r-{run.name}" / "report.md").read_text()


def test_clip_heatmap_from_telemetry(results_root, tmp_path):
    run_dir = results_root / "runs" / "spike-adagc-adamw-0"
    names, steps, rates = clip_rates(run_dir)
    assert names == ["0", "1", "other"] and steps == [50, 100, 150, 200, 250, 300]
    np.testing.assert_allclose(rates[0], np.arange(1, 7) / 6)
    np.testing.assert_allclose(rates[1], 1 - np.arange(1, 7) / 6)
    np.testing.assert_allclose(rates[2], 0.5)
    paths = plot_clip_heatmap(run_dir, tmp_path)
    assert [p.name for p in paths] == [
        "clip_heatmap_spike-adagc-adamw-0.png",
        "clip_heatmap_spike-adagc-adamw-0.svg",
    ]
    assert plot_clip_heatmap(results_root / "runs" / "spike-global-adamw-0", tmp_path) == []
