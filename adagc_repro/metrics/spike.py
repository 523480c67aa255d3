"""Spike score: the share of steps whose loss or gradient norm jumps far from its recent history.

Offline definition (OLMo 2, spec §2.1): a finite value x_t is a spike when it lies at least N rolling
standard deviations from the rolling mean of the previous W finite values. Choices the paper leaves
open are parameters (`SpikePreset`); every reported number carries its `definition()` string.

Non-finite values (NaN, ±inf, None) are divergence events: never spikes, never inside a window, but
counted in the "all_steps" denominator. The first W finite values are never tested.

`SpikeMonitor` is the live, checkpointable variant with OLMo-core `StabilityMonitorCallback`
semantics (one-sided, strictly greater, population σ, window of 128, 6σ).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from adagc_repro.errors import ConfigError

DENOMINATORS = ("all_steps", "evaluated_steps")
SERIES = ("loss", "grad_norm")

# A rolling variance from running sums carries rounding noise of about eps·E[y²] (y: values centred
# on a local reference). A variance below this share of E[y²] cannot be told apart from zero, so the
# step is treated like a constant window (not tested) rather than flagged on noise.
_VARIANCE_NOISE_FLOOR = 1e-12


def as_float_array(values: Sequence[float | None] | np.ndarray) -> np.ndarray:
    """float64 copy of a series, with None mapped to NaN."""
    if isinstance(values, np.ndarray):
        return values.astype(np.float64, copy=True)
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


def divergence_events(values: Sequence[float | None] | np.ndarray) -> int:
    """Number of non-finite entries (NaN, ±inf, None): steps where the run diverged or was skipped."""
    return int((~np.isfinite(as_float_array(values))).sum())


def _check_params(window: int, n_sigma: float, ddof: int, key: str = "spike") -> None:
    if not isinstance(window, (int, np.integer)) or isinstance(window, bool) or window < 1:
        raise ConfigError(f"{key}.window", f"must be a positive integer, got {window!r}")
    if not n_sigma > 0:
        raise ConfigError(f"{key}.n_sigma", f"must be > 0, got {n_sigma!r}")
    if ddof not in (0, 1) or ddof >= window:
        raise ConfigError(f"{key}.ddof", f"must be 0 or 1 and smaller than the window, got {ddof!r}", [0, 1])


def _rolling_moments(finite: np.ndarray, window: int, include_current: bool) -> tuple[np.ndarray, ...]:
    """Window mean, variance (population) and noise scale for every position j ≥ window of `finite`.

    The window of position j is finite[j-W : j] (or finite[j-W+1 : j+1] with the current value).
    O(n): the series is cut into blocks of W positions; each block gets a segment holding its W
    predecessors, centred on the segment median so that running sums stay small and the variance
    E[y²] − E[y]² does not lose precision to a large or drifting mean.
    Returns (centre of each position, mean of y over the window, E[y²] over the window, y at j).
    """
    n = len(finite)
    n_blocks = -(-(n - window) // window)
    padded = np.pad(finite, (0, n_blocks * window + window - n), mode="edge")
    starts = np.arange(n_blocks) * window
    segments = padded[starts[:, None] + np.arange(2 * window)]  # rows: W predecessors + W positions
    centres = np.median(segments, axis=1, keepdims=True)
    centred = segments - centres
    zero = np.zeros((n_blocks, 1))
    sum1 = np.concatenate([zero, np.cumsum(centred, axis=1)], axis=1)
    sum2 = np.concatenate([zero, np.cumsum(centred * centred, axis=1)], axis=1)
    lo = np.arange(window) + (1 if include_current else 0)  # window start of each block position
    mean_y = (sum1[:, lo + window] - sum1[:, lo]) / window
    mean_y2 = (sum2[:, lo + window] - sum2[:, lo]) / window
    current_y = centred[:, window:]
    count = n - window
    return tuple(a.reshape(-1)[:count] for a in (mean_y, mean_y2, current_y))


def _spike_test(
    values, window: int, n_sigma: float, include_current: bool, two_sided: bool, strict: bool, ddof: int
) -> tuple[np.ndarray, np.ndarray]:
    """(flags, tested): per step, whether it is a spike and whether it was tested at all."""
    _check_params(window, n_sigma, ddof)
    x = as_float_array(values)
    is_finite = np.isfinite(x)
    positions = np.flatnonzero(is_finite)
    flags = np.zeros(len(x), dtype=bool)
    tested = np.zeros(len(x), dtype=bool)
    if len(positions) <= window:
        return flags, tested
    mean_y, mean_y2, current_y = _rolling_moments(x[positions], window, include_current)
    variance = np.maximum(mean_y2 - mean_y * mean_y, 0.0) * window / (window - ddof)
    sigma = np.sqrt(variance)
    deviation = current_y - mean_y
    if two_sided:
        deviation = np.abs(deviation)
    threshold = n_sigma * sigma
    exceeds = deviation > threshold if strict else deviation >= threshold
    measurable = variance > _VARIANCE_NOISE_FLOOR * mean_y2
    tested_positions = positions[window:]
    tested[tested_positions] = True
    flags[tested_positions] = exceeds & measurable
    return flags, tested


def spike_flags(
    values: Sequence[float | None] | np.ndarray,
    window: int,
    n_sigma: float,
    include_current: bool = False,
    two_sided: bool = True,
    strict: bool = False,
    ddof: int = 0,
) -> np.ndarray:
    """Boolean per step: True where the value is a spike (see the module docstring)."""
    return _spike_test(values, window, n_sigma, include_current, two_sided, strict, ddof)[0]


def _percent(count: int, denominator: int) -> float:
    return 100.0 * count / denominator if denominator else 0.0


def spike_score(
    values: Sequence[float | None] | np.ndarray,
    window: int = 1000,
    n_sigma: float = 7.0,
    include_current: bool = False,
    two_sided: bool = True,
    strict: bool = False,
    ddof: int = 0,
    denominator: str = "all_steps",
) -> float:
    """Spike score in percent: 100 · spikes / steps (all steps, or only the tested ones)."""
    if denominator not in DENOMINATORS:
        raise ConfigError("spike.denominator", f"unknown denominator {denominator!r}", DENOMINATORS)
    flags, tested = _spike_test(values, window, n_sigma, include_current, two_sided, strict, ddof)
    steps = len(flags) if denominator == "all_steps" else int(tested.sum())
    return _percent(int(flags.sum()), steps)


@dataclass(frozen=True)
class SpikePreset:
    """One spike-score definition; the config's `spike.presets.<name>` maps onto these fields."""

    window: int = 1000
    n_sigma: float = 7.0
    two_sided: bool = True
    strict: bool = False
    include_current: bool = False
    ddof: int = 0
    denominator: str = "all_steps"

    def __post_init__(self) -> None:
        _check_params(self.window, self.n_sigma, self.ddof)
        if self.denominator not in DENOMINATORS:
            raise ConfigError("spike.denominator", f"unknown denominator {self.denominator!r}", DENOMINATORS)

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any] | SpikePreset) -> SpikePreset:
        if isinstance(config, SpikePreset):
            return config
        allowed = [f.name for f in fields(cls)]
        for key in config:
            if key not in allowed:
                raise ConfigError(f"spike.presets.{name}.{key}", "unknown spike preset key", allowed)
        try:
            return cls(**{key: config[key] for key in config})
        except ConfigError as error:
            field_name = error.key.rsplit(".", 1)[-1]
            raise ConfigError(f"spike.presets.{name}.{field_name}", error.problem, error.allowed) from None

    def definition(self) -> str:
        """Human-readable definition, written next to every score, e.g.
        "window=1000, 7σ, two-sided, >=, % of all steps"."""
        parts = [
            f"window={self.window}",
            f"{self.n_sigma:g}σ" + (" (sample σ)" if self.ddof else ""),
            "two-sided" if self.two_sided else "one-sided",
            ">" if self.strict else ">=",
        ]
        if self.include_current:
            parts.append("current value in window")
        parts.append("% of all steps" if self.denominator == "all_steps" else "% of tested steps")
        return ", ".join(parts)

    def test(self, values) -> tuple[np.ndarray, np.ndarray]:
        """(flags, tested) per step under this definition."""
        params = asdict(self)
        del params["denominator"]
        return _spike_test(values, **params)


def summarize_spikes(
    loss: Sequence[float | None], grad_norm: Sequence[float | None], presets: Mapping[str, Mapping]
) -> dict[str, dict[str, Any]]:
    """The `spike_score` block of summary.json: per preset, the score of the loss, of the grad norm
    and of "any" (a step flagged in either series), spike counts and the definition used."""
    if len(loss) != len(grad_norm):
        raise ValueError(f"loss and grad_norm must have one value per step ({len(loss)} != {len(grad_norm)})")
    summary = {}
    for name, config in presets.items():
        preset = SpikePreset.from_config(name, config)
        (loss_flags, loss_tested), (norm_flags, norm_tested) = preset.test(loss), preset.test(grad_norm)
        per_series = {
            "loss": (loss_flags, loss_tested),
            "grad_norm": (norm_flags, norm_tested),
            "any": (loss_flags | norm_flags, loss_tested | norm_tested),
        }
        entry: dict[str, Any] = {}
        counts = {}
        for series, (flags, tested) in per_series.items():
            counts[series] = int(flags.sum())
            steps = len(flags) if preset.denominator == "all_steps" else int(tested.sum())
            entry[series] = _percent(counts[series], steps)
        entry["counts"] = counts
        entry["definition"] = preset.definition()
        summary[name] = entry
    return summary


class SpikeMonitor:
    """Live spike detector in the style of OLMo-core's StabilityMonitorCallback.

    A step is a spike when its loss or its grad norm exceeds mean + n_sigma·σ of the previous `window`
    finite values of that series (population σ, current value excluded, strictly greater). Nothing is
    tested until the window is full, and a window with σ < 1e-10 flags nothing. Unlike OLMo-core,
    non-finite values are kept out of the histories (so one NaN cannot blind the detector for a
    whole window); they still count as steps. The loop calls `update` on every step, non-finite ones
    included (value None), so `spike/score_total` equals the summary's "any" score of the same
    definition (`olmo_core` preset): non-finite steps are in the denominator and never spikes.
    """

    MIN_SIGMA = 1e-10

    def __init__(self, window: int = 128, n_sigma: float = 6.0, rolling: int = 10000):
        _check_params(window, n_sigma, 0, key="spike.monitor")
        if not isinstance(rolling, int) or rolling < 1:
            raise ConfigError("spike.monitor.rolling", f"must be a positive integer, got {rolling!r}")
        self.window, self.n_sigma, self.rolling = window, n_sigma, rolling
        self._history = {series: deque(maxlen=window) for series in SERIES}
        self._recent_spikes: deque[bool] = deque(maxlen=rolling)
        self._total_spikes = 0
        self._total_steps = 0
        self._last_step: int | None = None

    def _is_spike(self, value: float, history: deque) -> bool:
        if len(history) < self.window or not math.isfinite(value):
            return False
        mean = math.fsum(history) / len(history)
        sigma = math.sqrt(math.fsum((h - mean) ** 2 for h in history) / len(history))
        return sigma >= self.MIN_SIGMA and value > mean + self.n_sigma * sigma

    def update(self, step: int, loss: float | None, grad_norm: float | None) -> dict[str, float | int]:
        """Record one step; returns the `spike/*` metrics to log for it (scores in percent)."""
        is_spike = False
        for series, value in (("loss", loss), ("grad_norm", grad_norm)):
            value = math.nan if value is None else float(value)
            is_spike |= self._is_spike(value, self._history[series])
            if math.isfinite(value):
                self._history[series].append(value)
        self._recent_spikes.append(is_spike)
        self._total_spikes += int(is_spike)
        self._total_steps += 1
        self._last_step = int(step)
        return {
            "spike/is_spike": int(is_spike),
            "spike/score": _percent(sum(self._recent_spikes), len(self._recent_spikes)),
            "spike/score_total": _percent(self._total_spikes, self._total_steps),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "n_sigma": self.n_sigma,
            "rolling": self.rolling,
            "loss_history": list(self._history["loss"]),
            "grad_norm_history": list(self._history["grad_norm"]),
            "recent_spikes": [int(s) for s in self._recent_spikes],
            "total_spikes": self._total_spikes,
            "total_steps": self._total_steps,
            "last_step": self._last_step,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore histories and counts. The monitor keeps its own window/σ/rolling settings, so a
        resumed run may change them; histories are trimmed to the current sizes."""
        for series in SERIES:
            self._history[series] = deque((float(v) for v in state[f"{series}_history"]), maxlen=self.window)
        self._recent_spikes = deque((bool(s) for s in state["recent_spikes"]), maxlen=self.rolling)
        self._total_spikes = int(state["total_spikes"])
        self._total_steps = int(state["total_steps"])
        self._last_step = state["last_step"]
