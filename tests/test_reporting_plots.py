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
    plot_clip_heatmap,
    plot_runs,
    read_curves,
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


def test_plot_runs_one_series_per_run_and_colour_per_method(results_root, tmp_path):
    run_dirs = sorted((results_root / "runs").glob("locality-*"))  # 4 methods × 2 seeds
    figure = curves_figure([read_curves(d) for d in run_dirs], log_scale=True)
    for ax in figure.axes:
        lines = [line for line in ax.get_lines() if str(line.get_gid()).startswith("series-")]
        assert len(lines) == len(run_dirs) == 8
        assert len({line.get_color() for line in lines}) == 4
        assert ax.get_yscale() == "log"
        assert {t.get_text() for t in ax.get_legend().get_texts()} >= {
            "GlobalGC",
            "LocalGC",
            "AdaGC-global",
            "AdaGC",
        }
    paths = plot_runs(run_dirs, tmp_path, log_scale=False)
    assert [p.name for p in paths] == ["curves.png", "curves.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = paths[1].read_text()
    for key in ("loss", "grad_norm"):
        assert len(re.findall(rf'id="series-{key}-locality-', svg)) == 8


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
