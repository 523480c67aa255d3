"""From command-line overrides to finished runs.

`plan` expands a (multi)run into jobs, composes and validates every one of them before anything
trains, and gives each its content-addressed run id. `run_job` is what Hydra calls per job in the
parent process: skip if DONE, otherwise lock the run folder, freeze the resolved config, train, and
leave DONE or FAILED + error.txt behind.
"""

from __future__ import annotations

import itertools
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from adagc_repro import config as config_lib
from adagc_repro import runs
from adagc_repro.atomic import write_json, write_text
from adagc_repro.errors import ConfigError


@dataclass
class Job:
    overrides: list[str]
    cfg: DictConfig
    run_id: str

    @property
    def results(self) -> Path:
        return Path(self.cfg.paths.results)

    @property
    def run_dir(self) -> Path:
        return runs.run_dir(self.results, self.run_id)


@dataclass
class Outcome:
    run_id: str
    status: str  # done | skipped | busy | failed
    detail: str = ""
    summary: dict = field(default_factory=dict)


def expand(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The jobs of a command line, as Hydra's basic sweeper runs them.

    A multirun sweeps over the config's `hydra.sweeper.params` (experiment files set them) and the
    command line's comma lists; the command line wins for a key given in both.
    """
    if not multirun:
        return [list(overrides)]
    parsed = _parse(overrides)
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    by_key: dict[str, list[str]] = {}
    for override in _parse(_config_sweep_params(plain)) + parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            by_key[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            by_key[key] = [override.input_line]
    return [list(combo) for combo in itertools.product(*by_key.values())]


def _parse(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:
        raise config_lib.explain(exc) from exc


def _config_sweep_params(overrides: list[str]) -> list[str]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    config_lib.register_schemas()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_lib.conf_dir()), version_base="1.3"):
            cfg = compose("config", overrides=overrides, return_hydra_config=True)
    except Exception as exc:
        raise config_lib.explain(exc) from exc
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    return [f"{key}={value}" for key, value in params.items()]


def plan(overrides: list[str], multirun: bool) -> list[Job]:
    jobs = []
    for job_overrides in expand(overrides, multirun):
        cfg = config_lib.compose(job_overrides)
        jobs.append(Job(job_overrides, cfg, config_lib.run_id(cfg)))
    return jobs


def run_job(cfg: DictConfig, argv: list[str]) -> Outcome:
    """Train one composed config into its run folder; never raises for a failed run (FAILED is written)."""
    identifier = config_lib.run_id(cfg)
    folder = runs.run_dir(Path(cfg.paths.results), identifier)
    if runs.status_of(folder) == "done" and not cfg.force:
        return Outcome(identifier, "skipped", "already DONE (force=true to redo)")
    ensure_writable(Path(cfg.paths.results))
    with runs.run_lock(folder) as owned:
        if not owned:
            return Outcome(identifier, "busy", "another process is training this run")
        if cfg.force:
            _reset(folder, Path(cfg.paths.checkpoints) / identifier)
        write_text(folder / "config.yaml", config_lib.to_yaml(cfg))
        from adagc_repro import provenance

        write_json(folder / "provenance.json", provenance.collect(argv))
        try:
            summary = _train_frozen(folder)
        except Exception as exc:
            runs.mark_failed(folder, traceback.format_exc())
            return Outcome(identifier, "failed", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        runs.mark_done(folder, summary)
        return Outcome(identifier, "done", summary=summary)


def _train_frozen(folder: Path) -> dict:
    """Train from the frozen config.yaml, exactly as a separate worker process would."""
    from adagc_repro.train import train

    return train(config_lib.load_frozen(folder), folder)


def _reset(folder: Path, checkpoints: Path) -> None:
    import shutil

    for name in (runs.DONE, runs.FAILED, runs.ERROR, "metrics.jsonl", "summary.json", "eval.json"):
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(checkpoints, ignore_errors=True)


def ensure_writable(results: Path) -> None:
    try:
        results.mkdir(parents=True, exist_ok=True)
        probe = results / ".write-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError("paths.results", f"'{results}' is not writable ({exc.strerror})") from exc
