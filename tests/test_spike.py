"""Spike score: O(n) rolling implementation against the spec's naive O(n·W) pseudocode, presets,
summaries, and the live OLMo-core-style monitor."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from adagc_repro.errors import ConfigError
from adagc_repro.metrics import (
    SpikeMonitor,
    SpikePreset,
    divergence_events,
    spike_flags,
    spike_score,
    summarize_spikes,
)

CONF = Path(__file__).resolve().parents[1] / "conf"


def naive_flags(values, window, n_sigma, include_current=False, two_sided=True, strict=False, ddof=0):
    """Spec §2.4 pseudocode, applied to the finite subsequence (non-finite values are skipped)."""
    x = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
    positions = np.flatnonzero(np.isfinite(x))
    finite = x[positions]
    flags = np.zeros(len(x), dtype=bool)
    for j in range(window, len(finite)):
        win = finite[j - window + 1 : j + 1] if include_current else finite[j - window : j]
        mu, sd = win.mean(), win.std(ddof=ddof)
        dev = abs(finite[j] - mu) if two_sided else finite[j] - mu
        flags[positions[j]] = sd > 0 and (dev > n_sigma * sd if strict else dev >= n_sigma * sd)
    return flags


def spiky_series(rng, n, level=0.0, scale=1.0, trend=0.0, n_spikes=10, n_nan=5):
    x = level + trend * np.arange(n) + scale * rng.standard_normal(n)
    spikes = rng.choice(n, n_spikes, replace=False)
    x[spikes] += rng.choice([-1, 1], n_spikes) * scale * rng.uniform(8, 40, n_spikes)
    x[rng.choice(n, n_nan, replace=False)] = rng.choice([np.nan, np.inf, -np.inf], n_nan)
    return x


OPTIONS = [
    dict(include_current=False, two_sided=True, strict=False, ddof=0),
    dict(include_current=True, two_sided=True, strict=False, ddof=0),
    dict(include_current=False, two_sided=False, strict=True, ddof=0),
    dict(include_current=False, two_sided=True, strict=True, ddof=1),
    dict(include_current=True, two_sided=False, strict=False, ddof=1),
]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("window,n_sigma", [(2, 0.5), (7, 2.0), (50, 4.0), (128, 6.0)])
def test_rolling_flags_match_naive_reference(window, n_sigma, options):
    rng = np.random.default_rng(window)
    # A large, drifting mean with a small spread: the case where naive running sums lose precision.
    x = spiky_series(rng, 1500, level=1e4, scale=1e-2, trend=-1e-5)
    expected = naive_flags(x, window, n_sigma, **options)
    got = spike_flags(x, window, n_sigma, **options)
    assert expected.sum() > 0
    np.testing.assert_array_equal(got, expected)


def test_olmo2_window_on_long_loss_like_series():
    rng = np.random.default_rng(1)
    x = 3.0 + 8.0 * np.exp(-np.arange(5000) / 800) + 0.05 * rng.standard_normal(5000)
    x[[3200, 4000, 4999]] += [1.5, 2.0, -1.0]
    np.testing.assert_array_equal(spike_flags(x, 1000, 7.0), naive_flags(x, 1000, 7.0))
    assert np.flatnonzero(spike_flags(x, 1000, 7.0)).tolist() == [3200, 4000, 4999]


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.one_of(st.integers(-20, 20), st.just(None), st.just(math.nan)), max_size=60),
    window=st.sampled_from([1, 2, 4, 8]),
    n_sigma=st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0]),
    include_current=st.booleans(),
    two_sided=st.booleans(),
    strict=st.booleans(),
)
def test_flags_match_naive_on_integer_series(values, window, n_sigma, include_current, two_sided, strict):
    # Small integers and power-of-two windows make every moment exact, so ties at exactly Nσ occur
    # and both implementations must agree on them bit for bit.
    options = dict(include_current=include_current, two_sided=two_sided, strict=strict)
    expected = naive_flags(values, window, n_sigma, **options)
    np.testing.assert_array_equal(spike_flags(values, window, n_sigma, **options), expected)


def test_tie_at_exactly_n_sigma_counts_only_for_at_least():
    series = [0, 2, 0, 2, 8]  # window mean 1, population σ 1, deviation exactly 7σ
    assert spike_flags(series, 4, 7.0).tolist() == [False] * 4 + [True]
    assert spike_flags(series, 4, 7.0, strict=True).tolist() == [False] * 5
    assert spike_flags([0, 2, 0, 2, -6], 4, 7.0).tolist()[-1]
    assert not spike_flags([0, 2, 0, 2, -6], 4, 7.0, two_sided=False).tolist()[-1]


def test_constant_window_is_never_a_spike():
    assert not spike_flags([5.0] * 20 + [6.0], 20, 7.0).any()
    assert not spike_flags([0.1] * 20 + [6.0], 20, 7.0).any()


def test_first_window_values_are_not_tested():
    assert not spike_flags([0, 0, 0, 1e9], 4, 1.0).any()
    assert spike_score([1.0] * 10, window=100) == 0.0
    assert spike_score([], window=3) == 0.0


def test_non_finite_values_are_divergence_events_outside_windows():
    finite = [1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 30.0, 1.0]
    with_gaps = [1.0, None, 2.0, 1.0, math.nan, 2.0, 1.0, math.inf, 2.0, 30.0, -math.inf, 1.0]
    flags = spike_flags(with_gaps, 4, 3.0)
    assert np.flatnonzero(flags).tolist() == [9]
    assert np.flatnonzero(spike_flags(finite, 4, 3.0)).tolist() == [6]
    assert divergence_events(with_gaps) == 4
    assert divergence_events(np.array([1.0, np.nan])) == 1
    # all_steps counts the divergence events in the denominator; evaluated_steps only tested steps.
    assert spike_score(with_gaps, 4, 3.0) == pytest.approx(100 / 12)
    assert spike_score(with_gaps, 4, 3.0, denominator="evaluated_steps") == pytest.approx(100 / 4)


def test_rejects_bad_parameters():
    with pytest.raises(ConfigError, match="spike.window"):
        spike_flags([1.0], 0, 7.0)
    with pytest.raises(ConfigError, match="spike.n_sigma"):
        spike_flags([1.0], 3, -1.0)
    with pytest.raises(ConfigError, match="spike.denominator"):
        spike_score([1.0], denominator="tested")


def load_presets():
    return OmegaConf.load(CONF / "spike" / "default.yaml")


def test_configured_presets_and_their_definitions():
    spike = load_presets()
    definitions = {
        name: SpikePreset.from_config(name, cfg).definition() for name, cfg in spike.presets.items()
    }
    assert definitions == {
        "olmo2": "window=1000, 7σ, two-sided, >=, % of all steps",
        "olmo_core": "window=128, 6σ, one-sided, >, % of all steps",
        "sigma10": "window=1000, 10σ, two-sided, >=, % of all steps",
    }
    assert dict(spike.monitor) == {"window": 128, "n_sigma": 6.0, "rolling": 10000}
    SpikeMonitor(**spike.monitor)
    extra = SpikePreset(window=50, n_sigma=6.5, ddof=1, include_current=True, denominator="evaluated_steps")
    assert extra.definition() == (
        "window=50, 6.5σ (sample σ), two-sided, >=, current value in window, % of tested steps"
    )


def test_preset_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"spike\.presets\.mine\.sigma"):
        SpikePreset.from_config("mine", {"window": 10, "sigma": 3})
    with pytest.raises(ConfigError, match=r"spike\.presets\.mine\.window"):
        SpikePreset.from_config("mine", {"window": 0})


def test_summary_block_per_preset_with_any_series():
    rng = np.random.default_rng(3)
    n = 400
    loss = list(5.0 + 0.01 * rng.standard_normal(n))
    grad_norm = list(1.0 + 0.01 * rng.standard_normal(n))
    loss[200] += 1.0
    grad_norm[200] += 1.0
    grad_norm[300] += 1.0
    loss[350] = None
    presets = {"short": {"window": 100, "n_sigma": 7.0}, "strict": {"window": 100, "n_sigma": 1e6}}
    summary = summarize_spikes(loss, grad_norm, presets)
    assert set(summary) == {"short", "strict"}
    short = summary["short"]
    assert short["counts"] == {"loss": 1, "grad_norm": 2, "any": 2}
    assert short["loss"] == pytest.approx(100 / n)
    assert short["grad_norm"] == pytest.approx(200 / n)
    assert short["any"] == pytest.approx(200 / n)
    assert short["definition"] == "window=100, 7σ, two-sided, >=, % of all steps"
    assert summary["strict"]["counts"] == {"loss": 0, "grad_norm": 0, "any": 0}
    assert json.loads(json.dumps(summary)) == summary
    full = summarize_spikes(loss, grad_norm, load_presets().presets)
    assert set(full) == {"olmo2", "olmo_core", "sigma10"}
    with pytest.raises(ValueError, match="one value per step"):
        summarize_spikes([1.0], [1.0, 2.0], presets)


def monitor_run(monitor, loss, grad_norm, start=0):
    return [monitor.update(start + i, a, b) for i, (a, b) in enumerate(zip(loss, grad_norm, strict=True))]


def test_monitor_matches_offline_olmo_core_definition():
    rng = np.random.default_rng(4)
    loss = spiky_series(rng, 1200, level=4.0, scale=0.05, n_spikes=8, n_nan=4)
    grad_norm = spiky_series(rng, 1200, level=1.0, scale=0.1, n_spikes=8, n_nan=4)
    grad_norm[5] = None
    outputs = monitor_run(SpikeMonitor(window=128, n_sigma=6.0, rolling=300), loss, grad_norm)
    live = np.array([o["spike/is_spike"] for o in outputs], dtype=bool)
    olmo_core = dict(window=128, n_sigma=6.0, two_sided=False, strict=True)
    offline = spike_flags(loss, **olmo_core) | spike_flags(grad_norm, **olmo_core)
    assert offline.sum() >= 4
    np.testing.assert_array_equal(live, offline)
    assert outputs[-1]["spike/score_total"] == pytest.approx(100 * offline.sum() / 1200)
    assert outputs[-1]["spike/score"] == pytest.approx(100 * offline[-300:].sum() / 300)
    assert outputs[9]["spike/score"] == 0.0


def test_monitor_ignores_flat_windows_and_downward_jumps():
    monitor = SpikeMonitor(window=4, n_sigma=2.0, rolling=10)
    assert [monitor.update(i, 1.0, 1.0)["spike/is_spike"] for i in range(5)] == [0] * 5
    monitor = SpikeMonitor(window=4, n_sigma=2.0, rolling=10)
    monitor_run(monitor, [1.0, 2.0, 1.0, 2.0], [1.0, 2.0, 1.0, 2.0])
    assert monitor.update(4, -50.0, 1.5)["spike/is_spike"] == 0
    assert monitor.update(5, 1.5, 40.0)["spike/is_spike"] == 1


def test_monitor_state_round_trip_is_exact():
    rng = np.random.default_rng(5)
    loss = spiky_series(rng, 600, level=3.0, scale=0.1, n_spikes=6, n_nan=3)
    grad_norm = spiky_series(rng, 600, level=2.0, scale=0.2, n_spikes=6, n_nan=3)
    reference = SpikeMonitor(window=32, n_sigma=4.0, rolling=100)
    uninterrupted = monitor_run(reference, loss, grad_norm)

    first = SpikeMonitor(window=32, n_sigma=4.0, rolling=100)
    head = monitor_run(first, loss[:250], grad_norm[:250])
    saved = json.loads(json.dumps(first.state_dict()))
    resumed = SpikeMonitor(window=32, n_sigma=4.0, rolling=100)
    resumed.load_state_dict(saved)
    assert resumed.state_dict() == saved
    tail = monitor_run(resumed, loss[250:], grad_norm[250:], start=250)
    assert head + tail == uninterrupted
    assert resumed.state_dict() == reference.state_dict()
    assert sum(o["spike/is_spike"] for o in uninterrupted) > 0


def test_monitor_rejects_bad_settings():
    with pytest.raises(ConfigError, match="spike.monitor.rolling"):
        SpikeMonitor(rolling=0)
    with pytest.raises(ConfigError, match="spike.monitor.window"):
        SpikeMonitor(window=0)
