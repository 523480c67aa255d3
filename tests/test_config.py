"""Config composition, validation errors and run ids."""

from __future__ import annotations

import pytest

from adagc_repro.config import compose, group_options, run_id
from adagc_repro.errors import ConfigError

REQUIRED = {
    "data=text_files": ["data.paths=[a.txt]"],
    "data=hf": ["data.name=allenai/c4"],
    "eval=lm_eval_local": ["eval.lm_eval.tasks=[my_task]", "eval.lm_eval.include_path=tasks"],
    "model=clip_tiny": ["data=shapes"],
    "model=clip_vit_b16": ["data=shapes"],
    "data=shapes": ["model=clip_tiny"],
}
GROUPS = ["model", "clip", "optim", "schedule", "data", "train", "logger", "eval", "spike", "paths"]


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(group):
    for option in group_options(group):
        override = f"{group}={option}"
        cfg = compose([override, *REQUIRED.get(override, [])])
        assert cfg[group] is not None


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("train.stepz=3", "train.stepz", "steps"),
        ("clip=nope", "clip=nope", "adagc"),
        ("train.steps=abc", "train.steps", None),
        ("clip.lambda_rell=1.1", "clip.lambda_rell", "lambda_rel"),
        ("train.device=tpu", "train.device", "cuda"),
        ("optim=adamw", "", None),
        ("train.steps=0", "train.steps", None),
        ("data.source=s3", "data.source", "stdlib_docs"),
    ],
)
def test_bad_overrides_fail_with_one_line_naming_the_key(override, key, allowed):
    if not key:
        compose([override])  # a good override, for contrast
        return
    with pytest.raises(ConfigError) as info:
        compose([override])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(key)
    if allowed:
        assert allowed in message


def test_run_id_ignores_logging_and_paths_but_not_semantics():
    base = run_id(compose([]))
    assert run_id(compose(["paths.results=/elsewhere", "logger=wandb", "train.progress=false",
                           "train.async_checkpoint=false"])) == base
    assert run_id(compose(["seed=1"])) != base
    assert run_id(compose(["clip=global"])) != base
    assert run_id(compose([])) == base


def test_every_subpackage_ships_in_a_wheel():
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"adagc_repro." + p.parent.name for p in (root / "adagc_repro").glob("*/__init__.py")}
    assert found | {"adagc_repro", "adagc_repro.conf"} == listed


def test_train_compile_defaults_to_auto_which_compiles_on_cuda_only():
    import torch

    from adagc_repro.train import compile_enabled

    assert compose([]).train.compile == "auto"
    assert compile_enabled("auto", torch.device("cuda")) and not compile_enabled("auto", torch.device("cpu"))
    assert compile_enabled(True, torch.device("cpu")) and not compile_enabled(False, torch.device("cuda"))
    assert compose(["train.compile=false"]).train.compile is False
    with pytest.raises(ConfigError, match=r"train.compile: invalid value 'maybe' \(allowed: auto, true, false\)"):
        compose(["train.compile=maybe"])
