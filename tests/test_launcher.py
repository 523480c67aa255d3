"""Launch plumbing without a cluster: the Slurm launcher composes, the torchrun command a Slurm node
would run is right, parallel settings stay out of the run id, and the global batch must split."""

from __future__ import annotations

import pytest

from adagc_repro import config as config_lib
from adagc_repro.distributed.torchrun import torchrun_command
from adagc_repro.errors import ConfigError


def _compose_with_hydra(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    config_lib.register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_lib.conf_dir()), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_composes_one_task_per_node_with_the_parallel_gpus():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install .[slurm]")
    cfg = _compose_with_hydra(["launcher=slurm", "parallel=fsdp2", "parallel.nproc_per_node=8", "parallel.nnodes=2",
                               "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 1, 8)
    assert launcher.partition == "gpu" and launcher.signal_delay_s == 120


def test_torchrun_command_on_a_slurm_node(tmp_path):
    parallel = {"name": "fsdp2", "nproc_per_node": 8, "nnodes": 2, "node_rank": 0, "rdzv_endpoint": "localhost:0"}
    env = {"SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[003-004]", "SLURM_JOB_ID": "4242"}
    command = torchrun_command(parallel, tmp_path / "run", "abc", env)
    flags = dict(zip(command[3:-3:2], command[4:-3:2], strict=True))
    assert command[1:3] == ["-m", "torch.distributed.run"]
    assert flags == {"--nnodes": "2", "--node-rank": "1", "--nproc-per-node": "8", "--rdzv-backend": "c10d",
                     "--rdzv-endpoint": "gpu003:29500", "--rdzv-id": "4242", "--max-restarts": "0",
                     "--log-dir": str(tmp_path / "run" / "torchrun"), "--tee": "3", "--local-ranks-filter": "0"}
    assert command[-3:] == ["-m", "adagc_repro.worker", str(tmp_path / "run")]


def test_one_node_uses_a_free_port_and_the_run_id():
    parallel = {"name": "ddp", "nproc_per_node": 2, "nnodes": 1, "node_rank": 0, "rdzv_endpoint": "localhost:0"}
    command = torchrun_command(parallel, "r", "abc", env={})
    assert command[command.index("--rdzv-endpoint") + 1] == "localhost:0"
    assert command[command.index("--rdzv-id") + 1] == "abc"


def test_run_id_ignores_the_parallel_layout():
    plain = config_lib.compose([])
    sharded = config_lib.compose(["parallel=fsdp2", "parallel.nproc_per_node=4", "train.activation_checkpointing=full"])
    assert config_lib.run_id(plain) == config_lib.run_id(sharded)
    assert config_lib.run_id(plain) != config_lib.run_id(config_lib.compose(["train.batch_size=4"]))


def test_a_global_batch_that_does_not_split_is_refused_before_anything_runs():
    from adagc_repro import launch

    with pytest.raises(ConfigError) as error:
        launch.plan(["parallel=ddp", "parallel.nproc_per_node=3", "train.batch_size=8"], multirun=False)
    assert str(error.value) == ("train.batch_size: the global batch of 8 sequences does not split over 3 processes "
                                "(allowed: a multiple of 3)")


@pytest.mark.parametrize("key,value", [("parallel.name", "zero3"), ("train.activation_checkpointing", "some")])
def test_parallel_choices_are_checked(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_lib.compose([f"{key}={value}"])


def test_workers_never_import_hydra():
    import subprocess
    import sys

    probe = ("import sys, adagc_repro.worker, adagc_repro.train; "
             "sys.exit(sorted(m for m in sys.modules if m.split('.')[0] in ('hydra', 'hydra_plugins')) != [])")
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 0


def test_other_nodes_only_run_their_workers(tmp_path, monkeypatch):
    from conftest import tiny_overrides

    from adagc_repro import launch

    cfg = config_lib.compose(tiny_overrides(tmp_path, "parallel=fsdp2", "parallel.nproc_per_node=2", "parallel.nnodes=2"))
    started = []
    monkeypatch.setenv("SLURM_NODEID", "1")
    monkeypatch.setattr(launch, "_train_with_torchrun", lambda folder, cfg: started.append(folder) or {})
    outcome = launch.run_job(cfg, ["test"])
    (folder,) = started
    assert outcome.status == "done" and outcome.detail == "node 1: workers finished"
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml"]  # no markers, no lock, no provenance


def test_a_second_stop_signal_kills_a_worker_that_is_still_stopping(tmp_path):
    """The first Ctrl-C asks the workers to checkpoint and stop; one that takes too long (here: one that
    ignores SIGTERM) is killed by the second, and the run counts as interrupted, not failed."""
    import os
    import signal
    import sys
    import threading
    import time

    from adagc_repro.launch import Interrupted, _run_workers

    stubborn = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"]
    for delay in (1.0, 1.5):
        threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT)).start()
    started = time.perf_counter()
    with pytest.raises(Interrupted):
        _run_workers(stubborn, tmp_path, what="the worker", error_reports="*.json")
    assert time.perf_counter() - started < 20
