"""lowp_norm: compute the model's normalisation layers (RMSNorm, LayerNorm) in bf16 from a step on.

At model build each norm module's class is swapped for a subclass that, while switched on, computes
the statistics, the normalisation and the scale in bf16 with autocast off (autocast would put them
back in fp32). The parameters and the state dict are unchanged. The switch is set before every
forward from the step alone, so a resumed run sees the same precision as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from adagc_repro.errors import ConfigError
from adagc_repro.faults import FAULTS
from adagc_repro.faults.base import Trigger

LOW = torch.bfloat16


@FAULTS.register("lowp_norm")
@dataclass
class LowPrecisionNorm(Trigger):
    duration: int = 0  # 0: until the end of the run
    name: ClassVar[str] = "lowp_norm"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._norms: list[nn.Module] = []

    def observe_from(self) -> int:
        return self.step  # the loss of the onset step is already computed in low precision

    def on_model(self, model: nn.Module, context) -> None:
        self._norms = [module for module in model.modules() if is_norm(module)]
        if not self._norms:
            raise ConfigError("fault.lowp_norm", f"{type(model).__name__} has no RMSNorm or LayerNorm module")
        for module in self._norms:
            module.__class__ = low_precision_class(type(module))
            module.low_precision = False

    def on_batch(self, batch, step, micro, context):
        active = self.active(step)
        if self._norms and self._norms[0].low_precision != active:
            for module in self._norms:
                module.low_precision = active
        return batch

    def event(self, step: int) -> dict[str, Any]:
        return {"dtype": str(LOW).removeprefix("torch."), "modules": len(self._norms)}


def is_norm(module: nn.Module) -> bool:
    rms = type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon")
    return rms or isinstance(module, nn.LayerNorm)


@cache
def low_precision_class(norm_class: type) -> type:
    forward = _layer_norm_low if issubclass(norm_class, nn.LayerNorm) else _rms_norm_low

    def switched(self, hidden_states):
        return forward(self, hidden_states) if self.low_precision else norm_class.forward(self, hidden_states)

    return type(f"LowPrecision{norm_class.__name__}", (norm_class,), {"forward": switched})


def _rms_norm_low(module, hidden_states: torch.Tensor) -> torch.Tensor:
    with torch.autocast(hidden_states.device.type, enabled=False):
        x = hidden_states.to(LOW)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + module.variance_epsilon)
        return (module.weight.to(LOW) * x).to(hidden_states.dtype)


def _layer_norm_low(module, hidden_states: torch.Tensor) -> torch.Tensor:
    def low(tensor):
        return None if tensor is None else tensor.to(LOW)

    with torch.autocast(hidden_states.device.type, enabled=False):
        x = F.layer_norm(low(hidden_states), module.normalized_shape, low(module.weight), low(module.bias), module.eps)
        return x.to(hidden_states.dtype)
