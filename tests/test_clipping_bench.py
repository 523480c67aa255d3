"""The clipper benchmark: Llama shapes, one row per clipper plus the clip_grad_norm_ baseline, and the CLI script."""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

import pytest
import torch

from adagc_repro.clipping import CLIPPERS
from adagc_repro.clipping.bench import BASELINE, LLAMA_SIZES, format_table, llama_shapes, main, run_bench

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("size", "params", "tensors"),
                         [("134m", 134.1e6, 111), ("1.35b", 1.345e9, 219), ("7b-shaped", 6.738e9, 291)])
def test_llama_shapes_give_the_named_sizes(size, params, tensors):
    shapes = llama_shapes(*LLAMA_SIZES[size])
    assert len(shapes) == tensors
    assert sum(math.prod(shape) for shape in shapes.values()) == pytest.approx(params, rel=2e-3)


def test_run_bench_rows_cover_every_clipper():
    rows = run_bench(device="cpu", sizes=["tiny"], repeats=2, warmup=1)
    assert [row["clipper"] for row in rows] == [BASELINE, *CLIPPERS.names()]
    assert rows[0]["ratio_to_global"] == 1.0
    assert all(row["ms_per_step"] > 0 and row["size"] == "tiny" for row in rows)
    assert all(row["device_ms_per_step"] > 0 for row in rows)  # on CPU: the host time, measured again
    baseline = rows[0]["device_ms_per_step"]
    assert [row["device_ratio_to_global"] for row in rows] == [row["device_ms_per_step"] / baseline for row in rows]
    assert "adagc" in format_table(rows)


def test_script_writes_json(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench.json"
    monkeypatch.setattr(sys, "argv", ["bench_clipping.py", "--device", "cpu", "--sizes", "tiny", "--repeats", "2",
                                      "--clippers", "global,adagc", "--out", str(out)])
    runpy.run_path(str(ROOT / "scripts" / "bench_clipping.py"), run_name="__main__")
    assert "clip_grad_norm_" in capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert [row["clipper"] for row in rows] == [BASELINE, "global", "adagc"]


def test_main_without_out_only_prints(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = main(["--device", "auto", "--sizes", "tiny", "--repeats", "1", "--warmup", "0", "--clippers", "none"])
    assert [row["clipper"] for row in rows] == [BASELINE, "none"]
    assert "wrote" not in capsys.readouterr().out and not any(tmp_path.iterdir())


def test_a_bench_cut_short_keeps_the_rows_it_measured(tmp_path, monkeypatch):
    from adagc_repro.clipping import bench

    built = bench._build

    def build_or_fail(name, impl):
        if name == "adagc":
            raise RuntimeError("out of memory")  # e.g. the largest size on a small GPU
        return built(name, impl)

    monkeypatch.setattr(bench, "_build", build_or_fail)
    out = tmp_path / "bench.json"
    with pytest.raises(RuntimeError, match="out of memory"):
        main(["--device", "cpu", "--sizes", "tiny", "--repeats", "1", "--warmup", "0", "--clippers", "global,adagc",
              "--out", str(out)])
    assert [row["clipper"] for row in json.loads(out.read_text())] == [BASELINE, "global"]


def test_with_an_optimizer_each_call_steps_it_and_the_clipping_is_what_it_adds():
    from adagc_repro.clipping.bench import OPTIMIZER_ALONE

    rows = run_bench(device="cpu", sizes=["tiny"], repeats=2, warmup=1, names=["adagc", "agc"],
                     impls=("eager", "folded"), optimizer="adamw")
    assert [(row["clipper"], row["impl"]) for row in rows] == [
        (OPTIMIZER_ALONE, "eager"), (BASELINE, "eager"), ("adagc", "eager"), ("adagc", "folded"), ("agc", "eager")]
    alone, baseline = rows[0]["device_ms_per_step"], rows[1]["device_ms_per_step"]
    for row in rows:
        assert row["optimizer"] == "adamw"
        assert row["clip_device_ms"] == pytest.approx(row["device_ms_per_step"] - alone)
        assert row["clip_device_ratio_to_global"] == pytest.approx(row["clip_device_ms"] / (baseline - alone))
    with pytest.raises(ValueError, match="--optimizer adamw"):
        run_bench(device="cpu", sizes=["tiny"], repeats=1, warmup=0, names=["adagc"], impls=("folded",))


def test_a_folded_bench_call_steps_the_parameters():
    from adagc_repro.clipping import bench

    named = bench.make_named_params("tiny", torch.device("cpu"), torch.float32)
    before = [p.detach().clone() for _, p in named]
    optimizer = bench._build_optimizer("adamw", named, torch.device("cpu"))
    (name, impl, call), = bench._clip_calls(named, torch.tensor(2.0), optimizer, ["adagc"], ["folded"])
    call()
    assert all(not torch.equal(p, old) for (_, p), old in zip(named, before, strict=True))
    assert all(int(optimizer.state[p]["step"]) == 1 for _, p in named)
