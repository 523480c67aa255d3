"""grad_scale: multiply chosen gradients at a step, a transient computational fault."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, ClassVar

import torch

from adagc_repro.errors import ConfigError
from adagc_repro.faults import FAULTS
from adagc_repro.faults.base import Trigger


@FAULTS.register("grad_scale")
@dataclass
class GradScale(Trigger):
    factor: float = 100.0
    tensors: str = "*"  # glob over parameter names, e.g. "*mlp*" or "model.layers.0.*"
    name: ClassVar[str] = "grad_scale"

    def on_gradients(self, grads, step, context) -> None:
        if self.active(step):
            torch._foreach_mul_([local_tensor(g) for g in chosen(grads, self.tensors, self.name)], self.factor)

    def event(self, step: int) -> dict[str, Any]:
        return {"factor": self.factor, "tensors": self.tensors}


def chosen(grads, pattern: str, trigger: str) -> list[torch.Tensor]:
    """The gradients whose parameter name matches `pattern`; none matching is a config error."""
    picked = [grad for name, grad in grads if fnmatchcase(name, pattern)]
    if not picked:
        raise ConfigError(f"fault.{trigger}.tensors", f"'{pattern}' matches no parameter", [name for name, _ in grads][:8] + ["..."])
    return picked


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a gradient: the local shard of a DTensor, else the tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor
