"""Per-tensor telemetry for metrics.jsonl: the top-k tensors by norm/threshold ratio and per-layer aggregates.

Meant to run every N steps: it reads the per-tensor vectors of one `ClipStats` back in one transfer and
then does Python work per tensor. Strategies without a per-tensor threshold (global, zclip, ...) have no
ratio; their top-k is ranked by norm.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

LAYER_PATTERN = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")
NO_LAYER = "other"


def layer_of(name: str) -> str:
    """Layer index parsed from names like `model.layers.3.mlp.up_proj.weight`; "other" otherwise."""
    match = LAYER_PATTERN.search(name)
    return match.group(1) if match else NO_LAYER


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def clip_telemetry(stats: Any, top_k: int = 5) -> dict[str, Any]:
    """`{"top": [{name, norm, ratio, coef}, ...], "layers": {layer: {norm, max_ratio, min_coef, clipped, tensors}}}`."""
    if stats.tensor_norms is None or not stats.names:
        return {"top": [], "layers": {}}
    norms = stats.tensor_norms
    coefs = stats.coefs if stats.coefs is not None else torch.ones_like(norms)
    ratios = stats.ratios if stats.ratios is not None else torch.full_like(norms, math.nan)
    norm_list, coef_list, ratio_list = torch.stack([norms, coefs, ratios]).double().tolist()
    rows = [
        {"name": name, "norm": _finite_or_none(n), "ratio": _finite_or_none(r), "coef": _finite_or_none(c)}
        for name, n, c, r in zip(stats.names, norm_list, coef_list, ratio_list, strict=True)
    ]
    has_ratio = any(row["ratio"] is not None for row in rows)
    sort_key = "ratio" if has_ratio else "norm"
    ranked = sorted(rows, key=lambda row: -math.inf if row[sort_key] is None else row[sort_key], reverse=True)
    return {"top": ranked[:top_k], "ranked_by": sort_key, "layers": _layer_aggregates(rows)}


def _layer_aggregates(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    layers: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = layers.setdefault(layer_of(row["name"]),
                                  {"sq_norm": 0.0, "max_ratio": None, "min_coef": None, "clipped": 0, "tensors": 0})
        entry["tensors"] += 1
        if row["norm"] is not None:
            entry["sq_norm"] += row["norm"] ** 2
        if row["ratio"] is not None:
            entry["max_ratio"] = row["ratio"] if entry["max_ratio"] is None else max(entry["max_ratio"], row["ratio"])
        if row["coef"] is not None:
            entry["min_coef"] = row["coef"] if entry["min_coef"] is None else min(entry["min_coef"], row["coef"])
            entry["clipped"] += row["coef"] < 1.0
    for entry in layers.values():
        entry["norm"] = _finite_or_none(math.sqrt(entry.pop("sq_norm")))
    return dict(sorted(layers.items(), key=lambda item: (item[0] == NO_LAYER, int(item[0]) if item[0].isdigit() else 0)))
