"""Run a function on N gloo processes (CPU) from a test: `run_on_ranks(fn, world_size, *args)`.

`fn(rank, world_size, *args)` runs after the process group is up; an assertion failing on any rank
fails the test with that rank's traceback.
"""

from __future__ import annotations

import os
import socket

import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, fn, args) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_on_ranks(fn, world_size: int, *args) -> None:
    mp.start_processes(_entry, args=(world_size, _free_port(), fn, args), nprocs=world_size, join=True,
                       start_method="spawn")


def tiny_llama(seed: int = 0):
    """Hidden 64, 2 layers, vocab 256; odd sizes so FSDP2 shards unevenly (torch.chunk rules)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=257, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config)
