"""From command-line overrides to finished runs.

`plan` expands a (multi)run into jobs, composes and validates every one of them before anything
trains, and gives each its content-addressed run id. `run_job` is what Hydra calls per job in the
parent process: skip if DONE, otherwise lock the run folder, freeze the resolved config, train, and
leave DONE or FAILED + error.txt behind. DONE is written only when metrics.jsonl holds every step.

Where a job trains: `ddp`/`fsdp2`/`auto` start torchrun workers (`python -m adagc_repro.worker
<run_dir>`, never importing Hydra). With `parallel=none`, a command that plans several jobs (a sweep)
trains each in its own plain worker process, so one job's CUDA error, compile cache or leaked memory
cannot touch the next; a lone job (`run` without -m, or a sweep of one) trains in this process, which
starts faster. Worker processes run in their own session and share this terminal; SIGINT, SIGTERM and
Slurm's SIGUSR2 are forwarded to them as SIGTERM: they checkpoint and stop together. A second signal
kills them at once (as a second Ctrl-C does in-process); the run resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
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
    status: str  # done | skipped | busy | failed | interrupted
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
        resolve_parallel(cfg)
        jobs.append(Job(job_overrides, cfg, config_lib.run_id(cfg)))
    return jobs


def run_job(cfg: DictConfig, argv: list[str], *, own_process: bool = False) -> Outcome:
    """Train one composed config into its run folder; never raises for a failed run (FAILED is written).

    `own_process`: train a `parallel=none` job in a worker process of its own (the jobs of a sweep).
    """
    identifier = config_lib.run_id(cfg)
    folder = runs.run_dir(Path(cfg.paths.results), identifier)
    if runs.status_of(folder) == "done" and not cfg.force:
        return Outcome(identifier, "skipped", "already DONE (force=true to redo)")
    ensure_writable(Path(cfg.paths.results))
    if cfg.parallel.name != "none" and _node_rank(cfg) > 0:
        return _follow(folder, cfg)
    with runs.run_lock(folder) as owned:
        if not owned:
            return Outcome(identifier, "busy", "another process is training this run")
        if cfg.force:
            _reset(folder, Path(cfg.paths.checkpoints) / identifier)
        write_text(folder / "config.yaml", config_lib.to_yaml(cfg))
        from adagc_repro import provenance

        write_json(folder / "provenance.json", provenance.collect(argv))
        try:
            summary = _train(folder, cfg, own_process)
        except Interrupted as exc:
            return Outcome(identifier, "interrupted", str(exc))
        except Exception as exc:
            runs.mark_failed(folder, getattr(exc, "details", None) or traceback.format_exc())
            return Outcome(identifier, "failed", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        missing = runs.missing_steps(folder, int(cfg.train.steps))
        if missing:
            reason = f"metrics.jsonl lacks {len(missing)} of steps 1..{cfg.train.steps} (first missing: {missing[0]})"
            runs.mark_failed(folder, reason + "\n")
            return Outcome(identifier, "failed", reason)
        runs.mark_done(folder, summary)
        return Outcome(identifier, "done", summary=summary)


class Interrupted(RuntimeError):
    """The run stopped on a signal after checkpointing; the same command resumes it."""


class WorkerFailed(RuntimeError):
    """A worker process failed; `details` holds its traceback (from the error.json `@record` wrote)."""

    def __init__(self, message: str, details: str):
        super().__init__(message)
        self.details = details


def resolve_parallel(cfg: DictConfig) -> None:
    """`parallel=auto` becomes fsdp2 over every visible GPU (none without GPUs); the global batch must split."""
    from adagc_repro.distributed.torchrun import processes_per_node

    if cfg.parallel.name == "auto":
        cfg.parallel.nproc_per_node = processes_per_node(cfg.parallel)
        cfg.parallel.name = "fsdp2" if cfg.parallel.nproc_per_node * cfg.parallel.nnodes > 1 else "none"
    if cfg.parallel.name == "none":
        return
    world = processes_per_node(cfg.parallel) * int(cfg.parallel.nnodes)
    if int(cfg.train.batch_size) % world:
        raise ConfigError("train.batch_size", f"the global batch of {cfg.train.batch_size} sequences does not "
                          f"split over {world} processes", f"a multiple of {world}")


def _node_rank(cfg: DictConfig) -> int:
    from adagc_repro.distributed.torchrun import node_rank

    return node_rank(cfg.parallel)


def _follow(folder: Path, cfg: DictConfig) -> Outcome:
    """Nodes other than node 0 of a multi-node run only run their workers; node 0 owns the run folder."""
    identifier = folder.name
    write_text(folder / "config.yaml", config_lib.to_yaml(cfg))  # identical to node 0's; workers may start first
    try:
        _train_with_torchrun(folder, cfg)
    except (Interrupted, WorkerFailed) as exc:
        return Outcome(identifier, "interrupted" if isinstance(exc, Interrupted) else "failed", str(exc))
    return Outcome(identifier, "done", f"node {_node_rank(cfg)}: workers finished")


def _train(folder: Path, cfg: DictConfig, own_process: bool) -> dict:
    if cfg.parallel.name != "none":
        return _train_with_torchrun(folder, cfg)
    return _train_in_child(folder) if own_process else _train_in_process(folder)


def _train_in_process(folder: Path) -> dict:
    from adagc_repro.train import TrainingInterrupted

    try:
        return _train_frozen(folder)
    except TrainingInterrupted as exc:
        raise Interrupted(str(exc)) from exc


def _train_with_torchrun(folder: Path, cfg: DictConfig) -> dict:
    from adagc_repro.distributed.torchrun import torchrun_command

    return _run_workers(torchrun_command(cfg.parallel, folder, folder.name), folder, what="torchrun",
                        error_reports="torchrun/*/attempt_*/*/error.json")


def _train_in_child(folder: Path) -> dict:
    """One worker without torchrun; `@record` writes its traceback where TORCHELASTIC_ERROR_FILE says."""
    from adagc_repro.worker import ERROR_REPORT

    # world size 1 even where the parent inherited rank variables (e.g. inside another launcher's job)
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env["TORCHELASTIC_ERROR_FILE"] = str(folder / ERROR_REPORT)
    return _run_workers([sys.executable, "-m", "adagc_repro.worker", str(folder)], folder, what="the worker",
                        error_reports=ERROR_REPORT, env=env)


def _run_workers(command: list[str], folder: Path, *, what: str, error_reports: str,
                 env: dict[str, str] | None = None) -> dict:
    """Run `command` for a run folder in its own session, forward stop signals, and map its exit to the
    summary, Interrupted or WorkerFailed (with the traceback from `error_reports`, a glob in the folder)."""
    from adagc_repro.worker import INTERRUPTED, SUMMARY

    (folder / SUMMARY).unlink(missing_ok=True)
    started = time.time()
    process = subprocess.Popen(command, env=env, start_new_session=True)
    stopped = []

    def forward(signum, frame):  # the first asks for a checkpoint and a stop; a second aborts at once
        _signal_group(process, signal.SIGKILL if stopped else signal.SIGTERM)
        stopped.append(signum)

    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
    previous = {sig: signal.signal(sig, forward) for sig in forwarded}
    try:
        returncode = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _signal_group(process, signal.SIGKILL)  # no stray process outlives its job
    if returncode == 0:  # rank 0 (on node 0) wrote the summary
        return json.loads((folder / SUMMARY).read_text()) if (folder / SUMMARY).exists() else {}
    if stopped or returncode == INTERRUPTED:
        raise Interrupted("stopped on a signal; run the same command to resume")
    ended = f"{what} {_exit_reason(returncode)}"
    message, details = _worker_error(folder, error_reports, since=started)
    raise WorkerFailed(message or ended, details or ended + "\n")


def _exit_reason(returncode: int) -> str:
    return f"was killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exited with {returncode}"


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _worker_error(folder: Path, reports: str, since: float) -> tuple[str, str]:
    """The first failing process's one-line message and traceback from the error.json files `@record`
    wrote during this attempt."""
    written = sorted((p for p in folder.glob(reports) if p.stat().st_mtime >= since), key=lambda p: p.stat().st_mtime)
    for path in written:
        message = json.loads(path.read_text()).get("message", {})
        if isinstance(message, dict):
            text = message.get("message", "")
            return text.splitlines()[0] if text else "", message.get("extraInfo", {}).get("py_callstack", text)
    return "", ""


def _train_frozen(folder: Path) -> dict:
    """Train from the frozen config.yaml, exactly as a separate worker process would."""
    from adagc_repro.train import train

    return train(config_lib.load_frozen(folder), folder)


def _reset(folder: Path, checkpoints: Path) -> None:
    import shutil

    from adagc_repro.checkpoint import RECORD

    for name in (runs.DONE, runs.FAILED, runs.ERROR, "metrics.jsonl", "summary.json", "eval.json", RECORD):
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
