"""Numbers the papers report, from `reported.json` (each with its source; secondary-source values flagged)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def load_reported() -> dict[str, Any]:
    return json.loads(resources.files("adagc_repro.reporting").joinpath("reported.json").read_text())


def reported_rows(table_kind: str) -> list[dict[str, Any]]:
    return load_reported()["tables"].get(table_kind, {}).get("rows", [])


def reported_notes(table_kind: str) -> list[str]:
    return load_reported()["tables"].get(table_kind, {}).get("notes", [])


def paper_model_name(config_name: str | None) -> str | None:
    """Paper name of a model config (llama2_7b -> 'Llama-2 7B'); other names are returned unchanged."""
    return load_reported()["models"].get(config_name, config_name)


def source_description(key: str) -> str:
    source = load_reported()["sources"][key]
    return f"{key}: {source['what']} ({source['where']})"
