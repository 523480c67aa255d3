"""The model presets in conf/model, with exact sizes (built on the meta device, nothing allocated)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEFAULT_FLOPS_SEQ_LEN = 2048


def load_preset(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text())


def describe_presets(conf_model_dir: Path) -> list[dict[str, Any]]:
    """One row per `conf/model/*.yaml`: name, family, kind, params, flops_per_token, seq_len, vocab_size.

    FLOPs are taken at the preset's own `seq_len` hint, or 2048 without one.
    """
    from adagc_repro.models import build_model, count_parameters, flops_per_token, model_kind

    rows = []
    for path in sorted(Path(conf_model_dir).glob("*.yaml")):
        preset = load_preset(path)
        model = build_model(preset, device="meta")
        seq_len = int(preset.get("seq_len", DEFAULT_FLOPS_SEQ_LEN))
        rows.append(
            {
                "name": preset.get("name", path.stem),
                "family": preset["family"],
                "kind": model_kind(preset),
                "params": count_parameters(model),
                "flops_per_token": flops_per_token(model, seq_len),
                "seq_len": seq_len,
                "vocab_size": _vocab_size(model.config),
            }
        )
    return rows


def _vocab_size(config) -> int:
    text_config = getattr(config, "text_config", None)
    return int((text_config or config).vocab_size)
