"""Curves with spike marks, the clip-rate heatmap, and the spike rule the plots use."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from fixtures.reporting_results import SPIKE_STEP, make_results

from adagc_repro.reporting.plots import (
    clip_rates,
    curves_figure,
    plot_clip_heatmap,
    plot_runs,
    read_curves,
    spike_flags,
)


@pytest.fixture(scope="module")
def results_root(tmp_path_factory) -> Path:
    return make_results(tmp_path_factory.mktemp("results"))


def _reference_flags(values, window, n_sigma, include_current, two_sided, strict, ddof):
    """The definition read literally: one window per finite value, no running sums."""
    x = np.asarray(values, dtype=float)
    positions = np.flatnonzero(np.isfinite(x))
    finite = x[positions]
    flags = np.zeros(len(x), dtype=bool)
    for j in range(window, len(finite)):
        win = finite[j - window + 1 : j + 1] if include_current else finite[j - window : j]
        sd = win.std(ddof=ddof)
        deviation = finite[j] - win.mean()
        deviation = abs(deviation) if two_sided else deviation
        beyond = deviation > n_sigma * sd if strict else deviation >= n_sigma * sd
        flags[positions[j]] = bool(beyond and sd > 0)
    return flags


@pytest.mark.parametrize(
    "rule",
    [
        dict(include_current=False, two_sided=True, strict=False, ddof=0),  # OLMo 2 preset
        dict(include_current=False, two_sided=False, strict=True, ddof=0),  # OLMo-core preset
        dict(include_current=True, two_sided=True, strict=False, ddof=1),
    ],
)
def test_spike_flags_match_the_literal_definition(rule):
    rng = np.random.default_rng(3)
    for _ in range(40):
        n = int(rng.integers(10, 400))
        x = 100.0 + rng.standard_normal(n) * rng.uniform(0.01, 3.0)
        x[rng.integers(0, n, 4)] += rng.uniform(5.0, 40.0, 4)
        x[rng.integers(0, n, 2)] = np.nan
        x[: n // 5] = 7.0  # a constant stretch: no σ, never a spike
        window, n_sigma = int(rng.integers(2, 40)), float(rng.uniform(2.0, 6.0))
        np.testing.assert_array_equal(
            spike_flags(x, window, n_sigma, **rule), _reference_flags(x, window, n_sigma, **rule)
        )
    assert not spike_flags([1.0, None, 2.0], 5, 3.0).any()


def test_curves_mark_the_injected_spike(results_root):
    spiky = read_curves(results_root / "runs" / "spike-global-adamw-0")
    calm = read_curves(results_root / "runs" / "spike-adagc-adamw-0")
    for key in ("loss", "grad_norm"):
        assert spiky.steps[spiky.spikes[key]].tolist() == [SPIKE_STEP]
        assert not calm.spikes[key].any()
    assert np.isnan(spiky.series["loss"][10])  # the null loss stays a gap
    assert (spiky.method, calm.method) == ("GlobalGC", "AdaGC")
    assert spiky.spike_rule == "spike: 6σ over previous 50"


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
