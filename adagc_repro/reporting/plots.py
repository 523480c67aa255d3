"""Figures from metrics.jsonl: loss and grad-norm curves with spikes marked, and a clip-rate heatmap.

Curves: one line per setting (runs that differ only in seed) at the mean over its seeds, with a min–max
band; one colour per method (paper names), a different dash from the line before it, and a legend entry
that names the config keys telling settings of one method apart. Spikes of each run are marked with × using the OLMo-core
stability-monitor definition (the run's `spike.presets.olmo_core` numbers when present).

Heatmap input: the `telemetry` object that training writes into a metrics.jsonl line every
`train.telemetry_every` steps (adagc_repro.clipping.telemetry). Its `layers` maps a layer ("0", "1",
..., "other") to aggregates of that layer's tensors, of which the heatmap reads `clipped` (tensors
whose clip coefficient was < 1) and `tensors`:
    {"step": 50, ..., "telemetry": {"top": [...], "layers": {"0": {"clipped": 3, "tensors": 9, ...}, ...}}}
The cell value is clipped / tensors; layers become rows, telemetry steps columns.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from adagc_repro.config import content_hash, setting_view  # noqa: E402
from adagc_repro.metrics.spike import SpikePreset  # noqa: E402
from adagc_repro.reporting.results import flatten, method_name, read_run_config  # noqa: E402
from adagc_repro.reporting.tables import METHOD_ORDER, varying_keys  # noqa: E402
from adagc_repro.run_log import read_jsonl  # noqa: E402

SERIES = (("loss", "train loss"), ("grad_norm", "grad norm (pre-clip)"))
MARKED_PRESET = "olmo_core"
# OLMo-core StabilityMonitorCallback, for runs whose config has no olmo_core preset.
OLMO_CORE = SpikePreset(window=128, n_sigma=6.0, two_sided=False, strict=True)


@dataclass
class RunCurves:
    run_id: str
    method: str
    seed: object
    steps: np.ndarray
    series: dict[str, np.ndarray]
    spikes: dict[str, np.ndarray]
    spike_rule: str  # legend text for the spike markers
    setting: str = ""  # config hash without the seed: runs with equal settings are seeds of one setting
    config: dict = field(default_factory=dict)  # that config, flattened


@dataclass
class SettingCurves:
    """The seeds of one setting on their common steps: mean, min and max per series."""

    method: str
    label: str
    runs: list[RunCurves]
    steps: np.ndarray
    mean: dict[str, np.ndarray]
    low: dict[str, np.ndarray]
    high: dict[str, np.ndarray]


def marked_preset(config: Mapping) -> SpikePreset:
    """The spike rule the curves mark: the run's olmo_core preset, else OLMo-core's defaults."""
    preset = ((config.get("spike") or {}).get("presets") or {}).get(MARKED_PRESET)
    return SpikePreset.from_config(MARKED_PRESET, preset) if preset else OLMO_CORE


def read_curves(run_dir: Path) -> RunCurves:
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    lines = [line for line in read_jsonl(run_dir / "metrics.jsonl") if "loss" in line and "step" in line]
    preset = marked_preset(config)
    steps = np.array([line["step"] for line in lines], dtype=float)
    series, spikes = {}, {}
    for key, _ in SERIES:
        values = np.array([np.nan if line.get(key) is None else line[key] for line in lines], dtype=float)
        series[key] = values
        spikes[key] = preset.test(values)[0]
    method = method_name((config.get("clip") or {}).get("name"), (config.get("optim") or {}).get("name"))
    rule = f"spike ({preset.definition().split(', %')[0]})"
    setting = setting_view(config)
    return RunCurves(run_dir.name, method, config.get("seed"), steps, series, spikes, rule,
                     content_hash(setting), flatten(setting))


def smoothed(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last `window` finite values at each step (gaps stay gaps)."""
    if window <= 1 or len(values) == 0:
        return values
    padded = np.concatenate([np.full(window - 1, np.nan), values])
    windows = np.lib.stride_tricks.sliding_window_view(padded, window)
    counts = np.isfinite(windows).sum(axis=1)
    sums = np.where(np.isfinite(windows), windows, 0.0).sum(axis=1)
    out = np.divide(sums, counts, out=np.full(len(values), np.nan), where=counts > 0)
    return np.where(np.isfinite(values), out, np.nan)


def group_settings(curves: Sequence[RunCurves], smooth: int = 1) -> list[SettingCurves]:
    """One SettingCurves per setting, labelled by method and the config keys that differ between settings."""
    by_setting: dict[str, list[RunCurves]] = {}
    for run in curves:
        by_setting.setdefault(run.setting or run.run_id, []).append(run)
    varying = varying_keys([runs[0].config for runs in by_setting.values()], ("clip.name",))
    grouped = []
    for runs in by_setting.values():
        steps = runs[0].steps
        for run in runs[1:]:
            steps = np.intersect1d(steps, run.steps)
        stacks = {
            key: np.vstack([smoothed(run.series[key], smooth)[np.isin(run.steps, steps)] for run in runs])
            for key, _ in SERIES
        }
        distinguishing = [f"{k}={_short(runs[0].config.get(k))}" for k in varying]
        label = runs[0].method + (f" ({', '.join(distinguishing)})" if distinguishing else "")
        label += f", n={len(runs)}" if len(runs) > 1 else ""
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN steps (a diverged step in every seed)
            grouped.append(SettingCurves(
                runs[0].method, label, runs, steps,
                mean={k: np.nanmean(v, axis=0) for k, v in stacks.items()},
                low={k: np.nanmin(v, axis=0) for k, v in stacks.items()},
                high={k: np.nanmax(v, axis=0) for k, v in stacks.items()},
            ))
    return sorted(grouped, key=lambda g: (_method_rank(g.method), g.label))


def _short(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _method_rank(method: str) -> tuple:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else 99, method)


def method_colours(methods: Iterable[str]) -> dict[str, tuple]:
    ordered = sorted(set(methods), key=_method_rank)
    palette = plt.get_cmap("tab10").colors
    return {method: palette[i % len(palette)] for i, method in enumerate(ordered)}


LINE_STYLES = ("-", "--", ":", "-.")


def curves_figure(curves: Sequence[RunCurves], log_scale: bool = False, smooth: int = 1) -> Figure:
    """Two stacked panels (loss, grad norm): per setting, the mean over seeds (gid 'series-<key>-<setting>')
    and its min–max band; one colour per method, `smooth` > 1 averages each run over that many steps."""
    settings = group_settings(curves, smooth)
    colours = method_colours(s.method for s in settings)
    # Consecutive lines differ in dash as well as colour, so a line that lies on another still shows.
    styles = [LINE_STYLES[index % len(LINE_STYLES)] for index in range(len(settings))]
    figure, axes = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for ax, (key, label) in zip(axes, SERIES, strict=True):
        marked = False
        for setting, style in zip(settings, styles, strict=True):
            colour = colours[setting.method]
            (line,) = ax.plot(setting.steps, setting.mean[key], color=colour, ls=style, lw=1.2, label=setting.label)
            line.set_gid(f"series-{key}-{setting.runs[0].setting or setting.runs[0].run_id}")
            if len(setting.runs) > 1:
                ax.fill_between(setting.steps, setting.low[key], setting.high[key], color=colour, alpha=0.18, lw=0)
            for run in setting.runs:
                hit = run.spikes[key]
                if hit.any():
                    ax.scatter(run.steps[hit], run.series[key][hit], marker="x", s=40, color=colour, zorder=3,
                               label="_nolegend_" if marked else run.spike_rule)
                    marked = True
        ax.set_ylabel(label + (f", mean of {smooth} steps" if smooth > 1 else ""))
        if log_scale:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel("step")
    axes[0].set_title("mean over seeds, band: min–max", fontsize=9)
    figure.tight_layout()
    return figure


def save_figure(figure: Figure, out_dir: Path, stem: str) -> list[Path]:
    """PNG and SVG, each written to a temporary name first and moved into place."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.svg"]
    for path in paths:
        temporary = path.with_name(f".{path.name}.tmp")
        figure.savefig(temporary, format=path.suffix[1:], dpi=120)
        os.replace(temporary, path)
    plt.close(figure)
    return paths


def plot_runs(
    run_dirs: Sequence[Path], out_dir: Path, log_scale: bool = False, stem: str = "curves", smooth: int = 1
) -> list[Path]:
    """Loss and grad-norm curves of the runs, as <stem>.png and <stem>.svg in out_dir."""
    curves = [read_curves(Path(run_dir)) for run_dir in run_dirs]
    figure = curves_figure(curves, log_scale, smooth)
    return save_figure(figure, Path(out_dir), f"{stem}_log" if log_scale else stem)


def clip_rates(run_dir: Path) -> tuple[list[str], list[int], np.ndarray]:
    """(layer names, steps, clipped fraction [layer, step]) from the telemetry lines; NaN where missing."""
    lines = [
        line
        for line in read_jsonl(Path(run_dir) / "metrics.jsonl")
        if (line.get("telemetry") or {}).get("layers")
    ]
    names = list(dict.fromkeys(layer for line in lines for layer in line["telemetry"]["layers"]))
    rates = np.full((len(names), len(lines)), np.nan)
    for column, line in enumerate(lines):
        for layer, aggregate in line["telemetry"]["layers"].items():
            if aggregate.get("tensors"):
                rates[names.index(layer), column] = aggregate["clipped"] / aggregate["tensors"]
    return names, [line.get("step") for line in lines], rates


def clip_heatmap_figure(
    names: Sequence[str], steps: Sequence[float], rates: np.ndarray, title: str
) -> Figure:
    figure, ax = plt.subplots(figsize=(9, max(2.5, 0.22 * len(names) + 1.5)))
    image = ax.imshow(
        np.ma.masked_invalid(rates),
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        vmin=0.0,
        vmax=1.0,
    )
    tick_every = max(1, len(steps) // 10)
    ax.set_xticks(range(0, len(steps), tick_every), [str(s) for s in steps[::tick_every]])
    label_every = max(1, len(names) // 40)
    ax.set_yticks(range(0, len(names), label_every), list(names)[::label_every], fontsize=7)
    ax.set_xlabel("step")
    ax.set_ylabel("layer")
    ax.set_title(title)
    figure.colorbar(image, ax=ax, label="fraction of tensors clipped")
    figure.tight_layout()
    return figure


def plot_clip_heatmap(run_dir: Path, out_dir: Path) -> list[Path]:
    """Per-layer clipped fraction over steps as clip_heatmap_<run_id>.{png,svg}; [] without telemetry."""
    names, steps, rates = clip_rates(Path(run_dir))
    if not names:
        return []
    run_id = Path(run_dir).name
    figure = clip_heatmap_figure(names, steps, rates, f"Per-layer clip rate, run {run_id}")
    return save_figure(figure, Path(out_dir), f"clip_heatmap_{run_id}")
