"""Figures from metrics.jsonl: loss and grad-norm curves with spikes marked, and a clip-rate heatmap.

Curves: one line per run, one colour per method (paper names), spikes marked with × using the
OLMo-core stability-monitor definition (the run's `spike.presets.olmo_core` numbers when present).

Heatmap input: the `telemetry` object that training writes into a metrics.jsonl line every
`train.telemetry_every` steps (adagc_repro.clipping.telemetry). Its `layers` maps a layer ("0", "1",
..., "other") to aggregates of that layer's tensors, of which the heatmap reads `clipped` (tensors
whose clip coefficient was < 1) and `tensors`:
    {"step": 50, ..., "telemetry": {"top": [...], "layers": {"0": {"clipped": 3, "tensors": 9, ...}, ...}}}
The cell value is clipped / tensors; layers become rows, telemetry steps columns.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from adagc_repro.metrics.spike import SpikePreset  # noqa: E402
from adagc_repro.reporting.results import method_name, read_run_config  # noqa: E402
from adagc_repro.reporting.tables import METHOD_ORDER  # noqa: E402
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
    return RunCurves(run_dir.name, method, config.get("seed"), steps, series, spikes, rule)


def method_colours(methods: Iterable[str]) -> dict[str, tuple]:
    ordered = sorted(set(methods), key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else 99, m))
    palette = plt.get_cmap("tab10").colors
    return {method: palette[i % len(palette)] for i, method in enumerate(ordered)}


def curves_figure(curves: Sequence[RunCurves], log_scale: bool = False) -> Figure:
    """Two stacked panels (loss, grad norm); each run is one line with gid 'series-<key>-<run_id>'."""
    colours = method_colours(c.method for c in curves)
    figure, axes = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for ax, (key, label) in zip(axes, SERIES, strict=True):
        labelled = set()
        for run in curves:
            colour = colours[run.method]
            legend = run.method if run.method not in labelled else "_nolegend_"
            labelled.add(run.method)
            (line,) = ax.plot(run.steps, run.series[key], color=colour, lw=1.0, alpha=0.85, label=legend)
            line.set_gid(f"series-{key}-{run.run_id}")
            hit = run.spikes[key]
            if hit.any():
                ax.scatter(
                    run.steps[hit],
                    run.series[key][hit],
                    marker="x",
                    s=40,
                    color=colour,
                    zorder=3,
                    label=run.spike_rule if run.spike_rule not in labelled else "_nolegend_",
                )
                labelled.add(run.spike_rule)
        ax.set_ylabel(label)
        if log_scale:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel("step")
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
    run_dirs: Sequence[Path], out_dir: Path, log_scale: bool = False, stem: str = "curves"
) -> list[Path]:
    """Loss and grad-norm curves of the runs, as <stem>.png and <stem>.svg in out_dir."""
    curves = [read_curves(Path(run_dir)) for run_dir in run_dirs]
    return save_figure(curves_figure(curves, log_scale), Path(out_dir), f"{stem}_log" if log_scale else stem)


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
