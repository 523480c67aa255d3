"""One self-contained report page (HTML, plus a Markdown twin) for a sweep, an experiment or everything.

The HTML inlines its CSS and its figures (base64 PNG), so a browser opens it without network access.
The Markdown links the PNG files written beside it under figures/.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from adagc_repro import runs as run_files
from adagc_repro.atomic import write_text
from adagc_repro.errors import ConfigError
from adagc_repro.reporting import experiments
from adagc_repro.reporting.formats import Table, to_html, to_markdown
from adagc_repro.reporting.plots import plot_clip_heatmap, plot_runs
from adagc_repro.reporting.reported import load_reported
from adagc_repro.reporting.results import excluded_counts, load_manifests, load_runs
from adagc_repro.reporting.spike_lab import spike_lab_figures
from adagc_repro.reporting.stats import TEST_DESCRIPTION
from adagc_repro.reporting.tables import overview_table, runs_table

MAX_HEATMAPS = 6
CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #1d2733; background: #ffffff; }
h1 { border-bottom: 3px solid #2f6db5; padding-bottom: .3rem; }
h2 { margin-top: 2.2rem; color: #2f6db5; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .85rem; }
th, td { border: 1px solid #c9d3df; padding: .25rem .5rem; text-align: right; white-space: nowrap; }
th { background: #e8eef6; } tbody tr:nth-child(even) { background: #f6f8fb; }
td:first-child, th:first-child { text-align: left; }
.table { overflow-x: auto; } .notes { font-size: .8rem; color: #4a5868; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #dde3ea; }
figcaption { font-size: .85rem; color: #4a5868; }
"""


@dataclass
class Figure:
    caption: str
    png: Path


@dataclass
class Report:
    title: str
    tables: list[Table]
    runs: pd.DataFrame
    figures: list[Figure] = field(default_factory=list)


def _collect(results_root: Path, target: str) -> Report:
    """The tables and runs of a run or sweep (folder or id), an experiment (file name or group) or 'all'."""
    path = Path(target)
    if (path / "manifest.json").exists() or (path / "config.yaml").exists():  # a sweep or run folder
        results_root, target = path.parent.parent, path.name
    manifests = {m.get("sweep_id"): m for m in load_manifests(results_root)}
    if target in manifests:
        runs = load_runs(results_root, sweep=target)
        excluded = excluded_counts(results_root, sweep=target)
        tables = [overview_table(runs, excluded, f"Runs of sweep {target}", f"runs_{target}")]
        if manifests[target].get("experiment"):
            tables += experiments.experiment_tables(results_root, manifests[target]["experiment"])
        return Report(f"Sweep {target}", tables, runs)
    if (run_files.run_dir(results_root, target) / run_files.DONE).exists():
        runs = load_runs(results_root)
        runs = runs[runs["run_id"] == target]
        return Report(f"Run {target}", [runs_table(runs, {}, f"Run {target}", f"run_{target}")], runs)
    if target == experiments.ALL:
        runs = load_runs(results_root)
        return Report(
            "All runs",
            [experiments.overview_table(results_root), *experiments.all_tables(results_root)],
            runs,
        )
    group, kind = experiments.resolve(target)
    names = experiments.selection_names(group, kind)
    runs = load_runs(results_root, experiment=names)
    if len(runs) == 0:
        known = sorted(set(manifests) | set(experiments.catalog()) | set(experiments.groups())) + [
            experiments.ALL
        ]
        raise ConfigError("report", f"no finished runs for '{target}' under {Path(results_root)}", known)
    tables = [overview_table(runs, excluded_counts(results_root, experiment=names), f"Runs of {group}")]
    return Report(f"Experiment {group}", tables + experiments.experiment_tables(results_root, target), runs)


def _setting_groups(runs: pd.DataFrame) -> dict[str, list[str]]:
    """Runs that belong in one curve figure: same model, optimizer and learning rate."""
    groups: dict[str, list[str]] = {}
    for _, run in runs.iterrows():
        parts = [
            f"{key}={run[key]}"
            for key in ("model.name", "optim.name", "optim.lr")
            if key in run and pd.notna(run[key])
        ]
        groups.setdefault(", ".join(parts) or "all runs", []).append(run["run_dir"])
    return groups


def _figures(runs: pd.DataFrame, figure_dir: Path) -> list[Figure]:
    figures = []
    for index, (setting, run_dirs) in enumerate(_setting_groups(runs).items()):
        png = plot_runs([Path(d) for d in run_dirs], figure_dir, stem=f"curves_{index}")[0]
        figures.append(
            Figure(
                f"Loss and pre-clip grad norm, {setting} ({len(run_dirs)} runs): mean over the seeds of each "
                "setting, band min–max; × marks spikes",
                png,
            )
        )
    figures += [Figure(caption, png) for caption, png in spike_lab_figures(runs, figure_dir)]
    heatmaps = 0
    for _, run in runs.sort_values(["method", "run_id"]).drop_duplicates("method").iterrows():
        paths = plot_clip_heatmap(Path(run["run_dir"]), figure_dir) if heatmaps < MAX_HEATMAPS else []
        if paths:
            heatmaps += 1
            figures.append(
                Figure(f"Per-layer clip rate over steps, {run['method']} (run {run['run_id']})", paths[0])
            )
    return figures


def _claims() -> list[str]:
    return [
        f"{c['claim']} [{c['source']}{', secondary source' if c['secondary'] else ''}]"
        for c in load_reported()["claims"]
    ]


def _html(report: Report) -> str:
    esc = html.escape
    toc = "".join(f'<li><a href="#{esc(t.name)}">{esc(t.title)}</a></li>' for t in report.tables)
    figures = "".join(
        f'<figure><img alt="{esc(f.caption)}" src="data:image/png;base64,'
        f'{base64.b64encode(f.png.read_bytes()).decode()}"><figcaption>{esc(f.caption)}</figcaption></figure>\n'
        for f in report.figures
    )
    claims = "".join(f"<li>{esc(c)}</li>" for c in _claims())
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{esc(report.title)}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n<h1>adagc-repro report: {esc(report.title)}</h1>\n"
        f"<p>{len(report.runs)} finished run(s). {esc(TEST_DESCRIPTION)}.</p>\n<ul>{toc}</ul>\n"
        f"<h2>Tables</h2>\n{''.join(to_html(t) for t in report.tables)}"
        f"<h2>Figures</h2>\n{figures or '<p>No metrics to plot.</p>'}"
        f'<h2>Headline claims of the papers</h2>\n<ul class="notes">{claims}</ul>\n</body>\n</html>\n'
    )


def _markdown(report: Report, out_dir: Path) -> str:
    parts = [
        f"# adagc-repro report: {report.title}",
        "",
        f"{len(report.runs)} finished run(s). {TEST_DESCRIPTION}.",
        "",
    ]
    parts += [to_markdown(t) for t in report.tables]
    parts += ["## Figures", ""] + [
        f"![{f.caption}]({f.png.relative_to(out_dir).as_posix()})\n" for f in report.figures
    ]
    parts += ["## Headline claims of the papers", ""] + [f"- {c}" for c in _claims()]
    return "\n".join(parts) + "\n"


def write_report(results_root: Path, sweep_or_experiment: str, out_dir: Path) -> tuple[Path, Path]:
    """Write report.html (self-contained) and report.md (+ figures/) into out_dir; return both paths."""
    out_dir = Path(out_dir)
    report = _collect(Path(results_root), sweep_or_experiment)
    report.figures = _figures(report.runs, out_dir / "figures")
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    write_text(html_path, _html(report))
    write_text(md_path, _markdown(report, out_dir))
    return html_path, md_path


def default_out_dir(results_root: Path, target: str) -> Path:
    return Path(results_root) / "reports" / Path(target).name
