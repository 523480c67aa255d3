"""Run a function on N gloo processes (CPU) from a test: `run_on_ranks(fn, world_size, *args)`.

`fn(rank, world_size, *args)` runs after the process group is up; an assertion failing on any rank
fails the test with that rank's traceback.

The rank processes start once and serve every call of the session: starting them costs each one the
torch and transformers imports (about 9 s on 2 cores), far more than most calls. conftest.py starts
them right after collection when a selected test will call them, so those imports overlap the tests
before it (most of the suite keeps one core busy). A failure ends them, so the next call starts fresh
ones and never runs on a group left inside a collective.
"""

from __future__ import annotations

import atexit
import os
import queue
import socket
import time
import traceback

import torch.multiprocessing as mp

CALL_TIMEOUT_S = 600  # a call that outlasts this is taken as hung (a rank waiting on a collective)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(rank: int, world_size: int, port: int, tasks, results) -> None:
    """One rank: join the group, then run each (fn, args) from `tasks` and report (rank, traceback or None)."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        while (task := tasks.get()) is not None:
            fn, args = task
            try:
                fn(rank, world_size, *args)
            except BaseException:
                results.put((rank, traceback.format_exc()))
            else:
                results.put((rank, None))
    finally:
        dist.destroy_process_group()


def _import_models(rank: int, world_size: int) -> None:
    import transformers.models.llama.modeling_llama  # noqa: F401  (what most calls build first)


class _Ranks:
    """`world_size` rank processes waiting for calls; their first task imports the models."""

    def __init__(self, world_size: int):
        context = mp.get_context("spawn")
        self.world_size = world_size
        self.tasks = [context.SimpleQueue() for _ in range(world_size)]
        self.results = context.Queue()
        port = _free_port()
        self.processes = [context.Process(target=_serve, args=(rank, world_size, port, self.tasks[rank], self.results),
                                          daemon=True) for rank in range(world_size)]
        for process in self.processes:
            process.start()
        self._send(_import_models, ())
        self.warming = True

    def _send(self, fn, args: tuple) -> None:
        for tasks in self.tasks:
            tasks.put((fn, args))

    def call(self, fn, args: tuple) -> str | None:
        """Run fn on every rank; the first failure's report, or None when every rank returned."""
        if self.warming:
            self.warming = False
            failure = self._wait()
            if failure is not None:
                return failure
        self._send(fn, args)
        return self._wait()

    def _wait(self) -> str | None:
        pending = set(range(self.world_size))
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while pending:
            try:
                rank, error = self.results.get(timeout=0.5)
            except queue.Empty:
                if time.monotonic() > deadline:
                    return f"ranks {sorted(pending)} still running after {CALL_TIMEOUT_S} s"
                dead = [rank for rank in sorted(pending) if not self.processes[rank].is_alive()]
                if dead:
                    return f"rank {dead[0]} died (exit code {self.processes[dead[0]].exitcode})"
                continue
            if error is not None:
                return f"rank {rank} failed:\n{error}"
            pending.discard(rank)
        return None

    def close(self) -> None:
        for tasks, process in zip(self.tasks, self.processes, strict=True):
            if process.is_alive():
                tasks.put(None)
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()

    def kill(self) -> None:
        for process in self.processes:
            process.kill()
            process.join()


_ranks: dict[int, _Ranks] = {}


def start_ranks(world_size: int = 2) -> None:
    """Start the rank processes now: they import in the background while other tests run."""
    if world_size not in _ranks:
        _ranks[world_size] = _Ranks(world_size)


def run_on_ranks(fn, world_size: int, *args) -> None:
    start_ranks(world_size)
    ranks = _ranks[world_size]
    failure = ranks.call(fn, args)
    if failure is not None:
        del _ranks[world_size]
        ranks.kill()  # the other ranks may be waiting inside a collective the failed one never reached
        raise AssertionError(failure)


@atexit.register
def _close_ranks() -> None:
    for ranks in _ranks.values():
        ranks.close()


def tiny_llama(seed: int = 0):
    """Hidden 64, 2 layers, vocab 256; odd sizes so FSDP2 shards unevenly (torch.chunk rules)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=257, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def tiny_mixtral(seed: int = 0):
    """Hidden 32, 2 layers, 3 stacked experts: FSDP2 gives rank 0 of 2 experts 0-1 and rank 1 expert 2."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(seed)
    config = MixtralConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=3,
                           num_experts_per_tok=2, max_position_embeddings=64)
    return MixtralForCausalLM(config)
