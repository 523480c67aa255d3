"""Config schemas, composition, validation and content-addressed run ids.

Fixed groups (train, logger, paths, meta) are dataclass schemas, so a typo or a wrong type fails at
compose time. Registry-backed groups (model, clip, optim, schedule, data) are checked against their
builder's signature by `validate`. Nothing here imports torch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from adagc_repro.errors import ConfigError

# Keys that change how a run is logged or where it is stored, not what it computes: left out of the run id.
RUN_ID_EXCLUDED = (
    "logger",
    "paths",
    "eval",
    "force",
    "train.progress",
    "train.profile_at",
    "train.log_every",
    "train.telemetry_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.final_checkpoint",
    "train.export_dtype",
    "train.async_checkpoint",  # when the shards are written, not what they hold
    "train.activation_checkpointing",  # recomputation gives the same numbers
    "train.fold_clip",  # the same AdamW update with the clipping applied inside it (only rounding differs)
    "parallel",  # a run can resume on another number of processes; batches are global
    "meta.fault_step",  # only read through fault.<name>.step, which the run id holds
)


# Field types only: the values live in conf/<group>/*.yaml, so every default is written once.
@dataclass
class TrainConfig:
    steps: int = MISSING
    batch_size: int = MISSING
    grad_accum: int = MISSING
    seq_len: int = MISSING
    device: str = MISSING
    precision: str = MISSING
    compile: Any = MISSING  # auto | true | false
    val_every: int = MISSING
    val_batches: int = MISSING
    log_every: int = MISSING
    telemetry_every: int = MISSING
    checkpoint_every: int = MISSING
    keep_checkpoints: int = MISSING
    final_checkpoint: bool = MISSING
    export_dtype: str = MISSING
    async_checkpoint: bool = MISSING
    max_nonfinite_skips: int = MISSING
    deterministic: bool = MISSING
    progress: bool = MISSING
    profile_at: int = MISSING
    activation_checkpointing: str = MISSING
    fold_clip: Any = MISSING  # auto | true | false


@dataclass
class ParallelConfig:
    name: str = MISSING  # none | ddp | fsdp2 | auto
    nproc_per_node: int = MISSING  # 0: every visible GPU
    nnodes: int = MISSING
    node_rank: int = MISSING
    rdzv_endpoint: str = MISSING
    bucket_cap_mb: int | None = None  # DDP only (conf/parallel/ddp.yaml)


@dataclass
class LoggerConfig:
    name: str = MISSING
    mode: str = "offline"
    project: str = "adagc-repro"
    entity: str | None = None
    group: str | None = None


@dataclass
class PathsConfig:
    results: str = MISSING
    checkpoints: str = MISSING
    cache: str = MISSING


@dataclass
class MetaConfig:
    experiment: str | None = None
    table: str | None = None
    scale: str | None = None
    fault_step: int = 120  # the step every trigger of conf/fault fires at unless fault.<name>.step says


@dataclass
class RootConfig:
    model: Any = None
    clip: Any = None
    optim: Any = None
    schedule: Any = None
    data: Any = None
    eval: Any = None
    spike: Any = None
    fault: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    seed: int = 0
    force: bool = False


CHOICES = {
    "train.device": r"auto|cpu|cuda(:\d+)?",
    "train.precision": r"auto|fp32|bf16",
    "train.compile": r"auto|true|false",
    "train.fold_clip": r"auto|true|false",
    "logger.name": r"none|wandb",
    "logger.mode": r"offline|online|disabled",
    "train.activation_checkpointing": r"none|full|selective",
    "train.export_dtype": r"float32|bfloat16",
    "parallel.name": r"none|ddp|fsdp2|auto",
}


# Lower bounds of the integer train keys (0 turns the periodic ones off).
TRAIN_MINIMUMS = {
    "steps": 1, "batch_size": 1, "grad_accum": 1, "seq_len": 1, "val_batches": 1, "log_every": 1,
    "keep_checkpoints": 1, "max_nonfinite_skips": 1, "val_every": 0, "telemetry_every": 0, "checkpoint_every": 0,
    "profile_at": 0,
}


def register_schemas() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="adagc_repro_schema", node=RootConfig)


def conf_dir() -> Path:
    """The config folder: conf/ beside the package in a checkout, else the installed adagc_repro.conf."""
    import adagc_repro

    checkout = Path(adagc_repro.__file__).resolve().parent.parent / "conf"
    if (checkout / "config.yaml").exists():
        return checkout
    from importlib.resources import files

    return Path(str(files("adagc_repro.conf")))


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose the root config with Hydra's compose API and validate it; errors become one ConfigError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_schemas()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose("config", overrides=list(overrides))
    except Exception as exc:  # Hydra and OmegaConf raise many types; users get one line
        error = explain(exc)
        if error.problem == "unknown key" and error.allowed is None:
            error = _with_allowed_keys(error, overrides)
        raise error from exc
    validate(cfg)
    return cfg


def _with_allowed_keys(error: ConfigError, overrides) -> ConfigError:
    """Name the keys that do exist beside an unknown one, from the config composed without it."""
    parent = error.key.rsplit(".", 1)[0] if "." in error.key else ""
    others = [o for o in overrides if not o.lstrip("+~").startswith(error.key)]
    try:
        cfg = compose(others)
    except ConfigError:
        return error
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return ConfigError(error.key, error.problem, (list(node.keys()) or None) if isinstance(node, DictConfig) else None)


def validate(cfg: DictConfig) -> None:
    """Check choice-valued keys and every registry-backed group against its builder."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as exc:
        raise explain(exc) from exc
    for key, pattern in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        text = str(value).lower() if isinstance(value, bool) else str(value)  # YAML spells booleans in lower case
        if not re.fullmatch(pattern, text):
            raise ConfigError(key, f"invalid value {value!r}", pattern.replace("|", ", "))
    for key, low in TRAIN_MINIMUMS.items():
        if resolved["train"][key] < low:
            raise ConfigError(f"train.{key}", f"must be >= {low}, got {resolved['train'][key]}")
    for validator in _group_validators():
        validator(resolved)


def suspicious_settings(cfg: DictConfig) -> list[str]:
    """Legal settings that probably do not do what was meant: one line each, for the CLI to warn about."""
    steps, notes = int(cfg.train.steps), []
    clip_warmup = cfg.clip.get("warmup_steps")
    if clip_warmup is not None and steps <= int(clip_warmup):
        same = " (AdaGC then equals GlobalGC at clip.lambda_abs)" if "lambda_abs" in cfg.clip else ""
        notes.append(f"train.steps={steps} <= clip.warmup_steps={clip_warmup}: clip={cfg.clip.name} never leaves "
                     f"its warm-up{same}")
    schedule_warmup = cfg.schedule.get("warmup_steps")
    if schedule_warmup is not None and steps <= int(schedule_warmup):
        notes.append(f"train.steps={steps} <= schedule.warmup_steps={schedule_warmup}: the learning rate never "
                     "reaches optim.lr")
    return notes


def _group_validators():
    """Validators of the registry-backed groups; imported lazily because they import torch."""
    from adagc_repro.components import validate_component_configs
    from adagc_repro.data import validate_data_config
    from adagc_repro.eval.run_eval import check_eval_config
    from adagc_repro.faults import validate_fault_config

    return (
        validate_data_config,
        validate_component_configs,
        lambda resolved: check_eval_config(resolved["eval"]),
        validate_fault_config,
    )


def hparams(node: Any, *registry_keys: str) -> dict[str, Any]:
    """A group node as builder kwargs: resolved, with the registry-selecting keys removed."""
    container = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    return {k: v for k, v in container.items() if k not in registry_keys}


def semantic_view(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config minus the keys that do not change what a run computes."""
    return without_keys(OmegaConf.to_container(cfg, resolve=True), RUN_ID_EXCLUDED)


def without_keys(view: dict[str, Any], dotted_keys) -> dict[str, Any]:
    """A copy of a plain nested config without the given dotted keys."""
    view = copy.deepcopy(view)
    for dotted in dotted_keys:
        *parents, leaf = dotted.split(".")
        node = view
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    if not view.get("fault"):  # no fault: the run id of a plain run stays what it always was
        view.pop("fault", None)
    return view


def setting_view(config: dict[str, Any]) -> dict[str, Any]:
    """What a run computes apart from its seed: runs with equal setting views are seeds of one setting."""
    return without_keys(config, (*RUN_ID_EXCLUDED, "seed"))


def run_id(cfg: DictConfig) -> str:
    return content_hash(semantic_view(cfg))


def content_hash(view: dict[str, Any]) -> str:
    canonical = json.dumps(view, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def load_frozen(run_dir: Path) -> DictConfig:
    """The resolved config a run was started with (workers read this, never Hydra)."""
    return OmegaConf.load(Path(run_dir) / "config.yaml")


# ---- turning Hydra/OmegaConf exceptions into one line -------------------------------------------


UNPARSABLE_HINT = ("KEY=VALUE with ASCII keys; quote a value with other characters, e.g. key='välue'; "
                   "flags: -m/--multirun, --results DIR")


def explain(exc: BaseException) -> ConfigError:
    if isinstance(exc, ConfigError):
        return exc
    for cause in _causes(exc):
        if isinstance(cause, ConfigError):
            return cause
        message = str(cause)
        unparsable = re.match(r"\w*Exception: (.*)", message)
        if type(cause).__name__ == "OverrideParseException" and unparsable:
            return ConfigError(unparsable.group(1).strip(), "cannot parse this override", UNPARSABLE_HINT)
        missing_option = re.search(r"Could not find '([\w/]+)/([^']+)'", message)
        if missing_option:
            group, option = missing_option.groups()
            return ConfigError(f"{group}={option}", "unknown option", group_options(group) or None)
        full_key = getattr(cause, "full_key", None)
        if full_key:
            return _explain_key(cause, full_key)
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConfigError("", first_line)


def _causes(exc: BaseException):
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        yield exc
        exc = exc.__cause__ or exc.__context__


def _explain_key(cause: BaseException, full_key: str) -> ConfigError:
    text = getattr(cause, "msg", str(cause)).strip().splitlines()[0]
    if re.search(r"not in struct|Key '[^']*' (is )?not in", text):
        parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
        return ConfigError(full_key, "unknown key", _schema_keys(parent) or None)
    if "Missing mandatory value" in text:
        return ConfigError(full_key, "required value is missing; set it on the command line")
    return ConfigError(full_key, text)


@cache
def _schema_keys(parent: str) -> tuple[str, ...]:
    schema = OmegaConf.structured(RootConfig)
    node = OmegaConf.select(schema, parent) if parent else schema
    return tuple(node.keys()) if isinstance(node, DictConfig) else ()
