"""`adagc-repro bench summary`: Markdown from benchmark JSON, read without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from adagc_repro.cli import app


def _loop(tokens_per_s: float) -> dict:
    return {"tokens_per_s": tokens_per_s, "tokens_per_s_wall": tokens_per_s * 0.95, "mfu": 30.0, "step_s": 16384 / tokens_per_s,
            "compile_s": 20.0, "peak_memory_gb": 7.0, "clip_ms": 0.4, "clip_share": 0.01}


def write_step(folder: Path, model: str, time: str, project: float, plain: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    result = {"time": time, "versions": {"torch": "2.11.0"}, "model": model, "clip": "adagc", "optim": "adamw",
              "batch_size": 16, "seq_len": 1024, "steps": 60, "device": "cuda",
              "project": _loop(project), "plain": _loop(plain), "speedup": project / plain}
    (folder / f"bench_step_{model}.json").write_text(json.dumps(result))


def clip_row(size: str, clipper: str, impl: str, ms: float, device_ms: float | None, base: float = 1.0) -> dict:
    return {"size": size, "device": "NVIDIA H200", "dtype": "float32", "clipper": clipper, "impl": impl,
            "ms_per_step": ms, "ratio_to_global": ms / base, "device_ms_per_step": device_ms,
            "device_ratio_to_global": device_ms and device_ms / base}


def results_tree(root: Path) -> Path:
    write_step(root / "late", "llama_130m", "2026-12-01T03:36:07+0000", 585_000, 497_000)  # 1.177×: under 1.3
    write_step(root / "z_early", "llama_1b", "2026-11-30T21:30:46+0000", 60_000, 50_000)  # 1.2×: over 1.15
    (root / "late" / "machine.txt").write_text("NVIDIA H200\ntorch 2.11\n2026-12-01T03:34Z\n")
    rows = [clip_row("134m", "clip_grad_norm_", "eager", 1.0, 1.0), clip_row("134m", "adagc", "compiled", 0.75, 0.92),
            clip_row("1.35b", "clip_grad_norm_", "eager", 4.0, None, 4.0)]
    (root / "late" / "bench_clip_134m.json").write_text(json.dumps(rows))
    old = [{k: v for k, v in clip_row("7b", "adagc", "eager", 2.0, None).items() if "device" not in k or k == "device"}]
    (root / "bench_clipping.json").write_text(json.dumps(old))  # an early file: no impl, no GPU-time column
    return root


def test_history_lists_every_step_result_oldest_first_against_its_target(tmp_path):
    result = CliRunner().invoke(app, ["bench", "summary", str(results_tree(tmp_path))])
    assert result.exit_code == 0, result.output
    history = [line for line in result.output.splitlines() if line.startswith("| 2026-")]
    assert [line.split(" | ")[1] for line in history] == ["llama_1b", "llama_130m"]
    assert "| 1.200× | 1.15× (met) |" in history[0] and "| 1.177× | 1.30× (not met) |" in history[1]
    assert "`z_early/bench_step_llama_1b.json`" in history[0] and "| 16,384 | 60,000 | 50,000 |" in history[0]


def test_each_folder_gets_its_machine_its_step_tables_and_one_clip_table(tmp_path):
    text = CliRunner().invoke(app, ["bench", "summary", str(results_tree(tmp_path))]).output
    late = text[text.index("## `late`"):]
    assert late.index("Machine, versions, date: NVIDIA H200 · torch 2.11 · 2026-12-01T03:34Z") < late.index("### `bench step`")
    assert "| project | 585,000 | 555,750 | 30.0 |" in late and "project / plain tokens/s: 1.177×" in late
    assert "| clipper | impl | 134m | 1.35b |" in late
    assert "| adagc | compiled | 0.75 (0.75×) / 0.92 (0.92×) | – |" in late  # no 1.35b row for it
    assert "| clip_grad_norm_ | eager | 1.00 (1.00×) / 1.00 (1.00×) | 4.00 (1.00×) / – |" in late  # no GPU time
    assert "| adagc | eager | 2.00 (2.00×) / – |" in text[text.index("## `.`"):]  # implementation defaults to eager


def test_summary_writes_a_file_and_reads_no_torch(tmp_path):
    root, out = results_tree(tmp_path / "r"), tmp_path / "bench.md"
    code = ("import sys; from pathlib import Path; from adagc_repro.benchmarks.summary import summary_markdown; "
            f"Path({str(out)!r}).write_text(summary_markdown(Path({str(root)!r}))); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert out.read_text() == CliRunner().invoke(app, ["bench", "summary", str(root)]).output


def test_a_folder_without_benchmarks_is_one_line_error(tmp_path):
    result = CliRunner().invoke(app, ["bench", "summary", str(tmp_path)])
    assert result.exit_code == 2 and "no bench_step_*.json or bench_clip*.json under" in result.output


def test_a_result_under_tuning_variables_says_so_in_its_table_and_in_the_history(tmp_path):
    write_step(tmp_path / "a", "llama_1b", "2026-11-30T21:30:46+0000", 60_000, 50_000)
    path = tmp_path / "b" / "bench_step_llama_130m.json"
    write_step(path.parent, "llama_130m", "2026-12-01T03:36:07+0000", 540_000, 490_000)
    result = json.loads(path.read_text())
    path.write_text(json.dumps({**result, "tuning_env": {"TORCHINDUCTOR_CACHE_DIR": "/tmp/x", "TORCHINDUCTOR_MAX_AUTOTUNE": "1"},
                                       "note": "exploration"}))
    text = CliRunner().invoke(app, ["bench", "summary", str(tmp_path)]).output
    history = [line for line in text.splitlines() if line.startswith("| 2026-")]
    assert history[1].startswith("| 2026-12-01 03:36 | llama_130m, TORCHINDUCTOR_MAX_AUTOTUNE=1 | adagc |")
    assert history[0].startswith("| 2026-11-30 21:30 | llama_1b | adagc |")  # none recorded: the plain label
    assert "· cuda · TORCHINDUCTOR_MAX_AUTOTUNE=1\nNote: exploration\n" in text


def test_tuning_env_keeps_only_the_variables_that_change_compilation_or_kernels(monkeypatch):
    from adagc_repro.provenance import tuning_env

    monkeypatch.setenv("TORCHINDUCTOR_MAX_AUTOTUNE", "1")
    monkeypatch.setenv("TORCH_CUDNN_SDPA_ENABLED", "1")
    monkeypatch.setenv("TORCH_HOME", "/somewhere")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/inductor")  # where, not what
    env = tuning_env()
    assert env["TORCHINDUCTOR_MAX_AUTOTUNE"] == "1" and env["TORCH_CUDNN_SDPA_ENABLED"] == "1"
    assert "TORCH_HOME" not in env and "TORCHINDUCTOR_CACHE_DIR" not in env


def test_a_result_with_the_same_kernels_loop_shows_it_its_ratio_and_its_phases(tmp_path):
    write_step(tmp_path, "llama_130m", "2026-12-01T11:30:00+0000", 514_000, 503_000)
    path = tmp_path / "bench_step_llama_130m.json"
    result = json.loads(path.read_text())
    phases = {"project": (0.3, 0.8, 25.3), "plain": (0.3, 0.8, 31.3), "plain_causal": (0.3, 0.8, 25.4)}
    for loop, (clip, optimizer, other) in phases.items():
        result.setdefault(loop, _loop(566_000))["phases_ms"] = {"clip": clip, "optimizer": optimizer, "other": other,
                                                                "total": clip + optimizer + other}
    path.write_text(json.dumps({**result, "speedup_same_kernels": 514_000 / 566_000}))
    text = CliRunner().invoke(app, ["bench", "summary", str(tmp_path)]).output
    assert "| plain_causal | 566,000 |" in text
    assert "project / plain_causal tokens/s: 0.908× (the same kernels" in text
    assert "| profiled steps, ms per step | project | plain | plain_causal | project / plain |" in text
    assert "| other | 25.300 | 31.300 | 25.400 | 0.81 |" in text
