"""Telemetry: top-k by norm/threshold ratio with names, per-layer aggregates, JSON-serialisable."""

from __future__ import annotations

import json

from test_clipping_helpers import named_params, set_grads, step_grads

from adagc_repro.clipping import build_clipper, clip_telemetry
from adagc_repro.clipping.telemetry import layer_of


def test_layer_index_is_parsed_from_common_names():
    assert layer_of("model.layers.3.mlp.up_proj.weight") == "3"
    assert layer_of("transformer.h.11.attn.c_attn.weight") == "11"
    assert layer_of("model.embed_tokens.weight") == "other"


def test_top_tensor_is_the_spiked_one_and_layers_aggregate():
    named = named_params()
    clipper = build_clipper("adagc", warmup_steps=2)
    steady = [g * 0.1 for g in step_grads(named, 0, spike_every=0)]  # below lambda_abs: gamma = these norms
    for _ in range(4):
        set_grads(named, steady)
        clipper(named)
    grads = [g.clone() for g in steady]
    grads[6] = grads[6] * 50  # model.layers.1.self_attn.k_proj.weight
    set_grads(named, grads)
    stats = clipper(named)
    report = clipper.telemetry(stats, top_k=2)
    json.dumps(report)
    assert report["ranked_by"] == "ratio"
    top = report["top"][0]
    assert top["name"] == "model.layers.1.self_attn.k_proj.weight" and top["ratio"] > 10 and top["coef"] < 0.1
    assert len(report["top"]) == 2 and report["top"][1]["ratio"] < 1.0
    layers = report["layers"]
    assert list(layers) == ["0", "1", "other"]
    assert layers["1"]["clipped"] == 1 and layers["0"]["clipped"] == 0 and layers["1"]["tensors"] == 4
    assert layers["1"]["max_ratio"] == top["ratio"] and layers["1"]["min_coef"] == top["coef"]
    assert layers["1"]["norm"] > layers["0"]["norm"]


def test_global_strategies_rank_by_norm():
    named = named_params()
    set_grads(named, step_grads(named, 3))  # step 3 spikes tensor 3
    stats = build_clipper("global")(named)
    report = clip_telemetry(stats, top_k=1)
    assert report["ranked_by"] == "norm" and report["top"][0]["name"] == named[3][0]
    assert report["top"][0]["ratio"] is None
