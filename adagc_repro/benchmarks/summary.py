"""`adagc-repro bench summary`: Markdown from the JSON that `bench step` and `bench clip` write, without torch.

One section per folder that holds benchmark files (its machine description first, from `machine.txt` or
`gpu.txt` beside them), with every `bench step` result (`bench_step_*.json`) and one table of the `bench
clip` rows (`bench_clip*.json`, sizes as columns). Several folders also get a first table: every `bench
step` ratio against the project's targets, oldest first, so that progress and regressions show.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

STEP_FILES, CLIP_FILES, MACHINE_FILES = "bench_step_*.json", "bench_clip*.json", ("machine.txt", "gpu.txt")
# The project's speed targets on one H200: loop tokens/s over the plain compiled loop's, by model, and
# a per-tensor clipper's GPU time over clip_grad_norm_'s.
STEP_TARGETS = {"llama_130m": 1.3, "llama_1b": 1.15}
CLIP_TARGET = 1.05


def format_step_table(result: dict[str, Any]) -> str:
    """Markdown: one row per loop, and their tokens/s ratio."""
    header = (f"{result['model']} · clip={result['clip']} · optim={result['optim']} · {result['batch_size']}×"
              f"{result['seq_len']} tokens · {result['steps']} steps · {result['device']}{_settings(result, ' · ')}")
    note = [f"Note: {result['note']}"] if result.get("note") else []  # added by hand to a stored result
    lines = [header, *note, "", "| loop | tokens/s | tokens/s (wall) | MFU % | step ms | compile s | peak GB | clip ms | clip share |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    loops = [name for name in ("project", "plain", "plain_causal") if name in result]  # plain_causal: from 2026-12-01
    for name in loops:
        row = result[name]
        lines.append(f"| {name} | {_num(row['tokens_per_s'], ',.0f')} | {_num(row['tokens_per_s_wall'], ',.0f')} | "
                     f"{_num(row['mfu'], '.1f')} | {_num(row['step_s'] and row['step_s'] * 1e3, '.1f')} | "
                     f"{_num(row['compile_s'], '.1f')} | {_num(row['peak_memory_gb'], '.1f')} | "
                     f"{_num(row['clip_ms'], '.2f')} | {_num(row['clip_share'] and 100 * row['clip_share'], '.1f')}% |")
    lines += ["", f"project / plain tokens/s: {_num(result['speedup'], '.3f')}×"]
    if "plain_causal" in result:
        lines.append(f"project / plain_causal tokens/s: {_num(result['speedup_same_kernels'], '.3f')}× (the same "
                     "kernels: the project's loop against none of its bookkeeping)")
    lines.append("(compile s: the warm-up steps' time beyond the steady median; the plain loops, run after it, find"
                 " the model's graphs in the compile caches the project's loop filled)")
    phases = {name: result[name].get("phases_ms") for name in loops}
    if all(phases.values()):  # --profile: the annotated parts of the profiled steps, inside each loop
        lines += ["", f"| profiled steps, ms per step | {' | '.join(loops)} | project / plain |",
                  "|---|" + "---:|" * (len(loops) + 1)]
        project, plain = phases["project"], phases["plain"]
        lines += [f"| {name} | " + " | ".join(f"{phases[loop][name]:.3f}" for loop in loops) +
                  f" | {_num(plain[name] and project[name] / plain[name], '.2f')} |" for name in project]
    return "\n".join(lines)


def format_clip_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: a row per clipper and implementation, a column per gradient size; each cell the ms per call
    on an idle GPU and the GPU ms with the host ahead, both with their ratio to `clip_grad_norm_`. Rows
    timed with an optimizer step (`bench clip --optimizer`) are named `<clipper> + <optimizer>`, and their
    cells end with the clipping's GPU ms beyond the optimizer step alone, again with its ratio."""
    sizes = list(dict.fromkeys(row["size"] for row in rows))
    cells = {(row["size"], _clip_label(row), row.get("impl", "eager")): row for row in rows}
    lines = ["ms per call on an idle GPU / GPU ms with the host ahead (ratios to `clip_grad_norm_`); "
             f"{rows[0]['dtype']} gradients, {rows[0]['device']}", "",
             "| clipper | impl | " + " | ".join(sizes) + " |", "|---|---|" + "---:|" * len(sizes)]
    for name, impl in dict.fromkeys((_clip_label(row), row.get("impl", "eager")) for row in rows):
        measured = [cells.get((size, name, impl)) for size in sizes]
        lines.append(f"| {name} | {impl} | " + " | ".join(_clip_cell(row) if row else "–" for row in measured) + " |")
    return "\n".join(lines)


def _clip_label(row: dict[str, Any]) -> str:
    return f"{row['clipper']} + {row['optimizer']}" if row.get("optimizer") else row["clipper"]


def _clip_cell(row: dict[str, Any]) -> str:
    device_ms = row.get("device_ms_per_step")
    device = f"{device_ms:.2f} ({row['device_ratio_to_global']:.2f}×)" if device_ms else "–"
    clip_ms = row.get("clip_device_ms")
    clipping = f"; clipping {clip_ms:.2f} ({row['clip_device_ratio_to_global']:.2f}×)" if clip_ms is not None else ""
    return f"{row['ms_per_step']:.2f} ({row['ratio_to_global']:.2f}×) / {device}{clipping}"


def step_history(results: Iterable[tuple[Path, dict[str, Any]]]) -> str:
    """Markdown: every `bench step` result, oldest first, with its ratio against the model's target."""
    lines = ["| date (UTC) | model | clip | tokens per step | project tokens/s | plain tokens/s | ratio | target | torch | file |",
             "|---|---|---|---:|---:|---:|---:|---:|---|---|"]
    for path, result in sorted(results, key=lambda item: item[1].get("time", "")):
        target = STEP_TARGETS.get(result["model"])
        verdict = "–" if target is None else f"{target:.2f}× ({'met' if result['speedup'] >= target else 'not met'})"
        lines.append(f"| {result.get('time', '–')[:16].replace('T', ' ')} | {result['model']}{_settings(result, ', ')} | "
                     f"{result['clip']} | "
                     f"{result['batch_size'] * result['seq_len']:,} | {_num(result['project']['tokens_per_s'], ',.0f')} | "
                     f"{_num(result['plain']['tokens_per_s'], ',.0f')} | {_num(result['speedup'], '.3f')}× | {verdict} | "
                     f"{result.get('versions', {}).get('torch', '–')} | `{path.as_posix()}` |")
    return "\n".join(lines)


def folder_section(folder: Path, shown_as: str) -> str:
    """The benchmark results in one folder: machine, `bench step` tables, one `bench clip` table."""
    lines = [f"## `{shown_as}`", ""]
    machine = next((folder / name for name in MACHINE_FILES if (folder / name).exists()), None)
    if machine is not None:
        lines += ["Machine, versions, date: " + " · ".join(machine.read_text().split("\n")).strip(" ·"), ""]
    for path in sorted(folder.glob(STEP_FILES)):
        lines += ["### `bench step`", "", format_step_table(json.loads(path.read_text())), ""]
    clip_rows = [row for path in sorted(folder.glob(CLIP_FILES)) for row in json.loads(path.read_text())]
    if clip_rows:
        lines += ["### `bench clip`", "", format_clip_table(clip_rows), ""]
    return "\n".join(lines)


def summary_markdown(root: Path, title: str = "Benchmarks") -> str:
    """Every folder under `root` (itself included) that holds benchmark JSON, each as a section; with more
    than one, the `bench step` history against the targets first."""
    files = sorted({*root.rglob(STEP_FILES), *root.rglob(CLIP_FILES)})
    if not files:
        raise FileNotFoundError(f"no {STEP_FILES} or {CLIP_FILES} under {root}")
    folders = list(dict.fromkeys(path.parent for path in files))
    lines = [f"# {title}", "", "Written by `adagc-repro bench summary` from the JSON files in this folder and below it.", ""]
    steps = [(path.relative_to(root), json.loads(path.read_text())) for path in files if path.match(STEP_FILES)]
    if len(folders) > 1 and steps:
        lines += ["## `bench step` over time", "", step_history(steps), "",
                  "Targets: the project's loop at least " + ", ".join(f"{t}× the plain compiled loop's tokens/s at `{m}`"
                                                                      for m, t in STEP_TARGETS.items())
                  + f"; per-tensor clipping at most {CLIP_TARGET}× `clip_grad_norm_`'s GPU time.", ""]
    for folder in folders:
        lines.append(folder_section(folder, folder.relative_to(root).as_posix()))
    return "\n".join(lines).rstrip() + "\n"


def _settings(result: dict[str, Any], separator: str) -> str:
    """The tuning environment variables a result ran under (`bench step` records them), for its label;
    cache locations, recorded before they were told apart, are left out."""
    from adagc_repro.provenance import is_tuning_variable

    env = {name: value for name, value in (result.get("tuning_env") or {}).items() if is_tuning_variable(name)}
    return separator + " ".join(f"{name}={value}" for name, value in env.items()) if env else ""


def _num(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)
