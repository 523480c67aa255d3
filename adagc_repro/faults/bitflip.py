"""bitflip: flip one bit of a chosen fraction of gradient entries, silent data corruption.

Entries are chosen by a generator seeded from (run seed, step, parameter name) and not the rank:
replicated gradients (DDP) stay identical on every rank, and each shard of a sharded gradient gets
its own deterministic choice within the shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from adagc_repro.errors import ConfigError
from adagc_repro.faults import FAULTS
from adagc_repro.faults.base import Trigger, seeded_generator
from adagc_repro.faults.grad_scale import chosen, local_tensor

# Same-width integer views of the float formats gradients come in.
BIT_VIEWS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float64: torch.int64}


@FAULTS.register("bitflip")
@dataclass
class BitFlip(Trigger):
    bit: int = 27  # bit index in the gradient's format; fp32: 0-22 mantissa, 23-30 exponent, 31 sign
    fraction: float = 1.0e-5  # share of each chosen tensor's entries (at least one entry per tensor)
    tensors: str = "*"
    name: ClassVar[str] = "bitflip"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError("fault.bitflip.fraction", f"must be in (0, 1], got {self.fraction}")
        if not 0 <= self.bit < 64:
            raise ConfigError("fault.bitflip.bit", f"must be a bit index of the gradient's format, got {self.bit}")

    def on_gradients(self, grads, step, context) -> None:
        if not self.active(step):
            return
        names = {id(grad): name for name, grad in grads}
        for grad in chosen(grads, self.tensors, self.name):
            flip_bits(local_tensor(grad), self.bit, self.fraction, seeded_generator(context.seed, self.name, step, names[id(grad)]))

    def event(self, step: int) -> dict[str, Any]:
        return {"bit": self.bit, "fraction": self.fraction, "tensors": self.tensors}


@torch.no_grad()
def flip_bits(tensor: torch.Tensor, bit: int, fraction: float, generator: torch.Generator) -> None:
    """XOR bit `bit` of max(1, round(fraction · numel)) distinct entries of `tensor`, in place."""
    if tensor.dtype not in BIT_VIEWS or not tensor.is_contiguous():
        raise ConfigError("fault.bitflip", f"cannot flip bits of a {tensor.dtype} non-contiguous={not tensor.is_contiguous()} gradient")
    width = tensor.element_size() * 8
    if bit >= width:
        raise ConfigError("fault.bitflip.bit", f"{bit} is not a bit of a {width}-bit {tensor.dtype} gradient", f"0-{width - 1}")
    count = max(1, round(fraction * tensor.numel()))
    index = torch.randperm(tensor.numel(), generator=generator)[:count].to(tensor.device)
    mask = (1 << bit) - (1 << width if bit == width - 1 else 0)  # the sign bit as a signed integer
    bits = tensor.view(-1).view(BIT_VIEWS[tensor.dtype])
    bits[index] = bits[index] ^ mask
