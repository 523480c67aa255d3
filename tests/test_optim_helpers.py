"""Helpers shared by the optimizer tests: the tiny Llama they train. (No tests here.)"""

from __future__ import annotations

TINY_LLAMA = {
    "name": "t",
    "family": "llama",
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 64,
}
