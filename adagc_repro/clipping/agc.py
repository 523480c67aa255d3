"""AGC: unit-wise adaptive gradient clipping (Brock et al. 2021, NFNets; spec §8.1).

For every unit i (a row of a 2-D or 3-D weight, dims 1.. of a 4-D+ kernel, the whole tensor for 0-/1-D,
as pytorch-optimizer's `unit_norm`): if ‖G_i‖/max(‖W_i‖, param_eps) > clip_val then
G_i ← clip_val·max(‖W_i‖, param_eps)/max(‖G_i‖, grad_eps) · G_i. Identical to pytorch-optimizer's `agc`.
NFNets does not clip the final classifier: the output head is left alone, found from the model (so a head
tied to the input embedding, GPT-2's `wte`, is excluded too), as are parameters whose name contains one of
`exclude` (the LM head by name, for (name, param) sources). Stacked experts are bound per expert, so each
expert's (out × in) slice has its own rows as units. Stateless.

Unit norms have a different shape per tensor, so this strategy loops over tensors (one kernel each, no
host sync) instead of using one foreach call. Reported per-tensor coefficients are the smallest unit
coefficient of the tensor and ratios the largest unit ratio. Sharded (DTensor) parameters are clipped
unit-wise within their local shard, which is exact for row-sharded (Shard(0)) weights; a 0-/1-D tensor
is one unit, so its full parameter and gradient norms come from the norm phase's one all-reduce.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from adagc_repro.clipping.base import CLIPPERS, Clipper, Decision, GradBatch, check_number, require


def unit_norms(x: Tensor) -> Tensor:
    """fp32 L2 norm of every unit of `x` (pytorch-optimizer's unit_norm, with keepdim for broadcasting)."""
    if x.dim() <= 1:
        return torch.linalg.vector_norm(x, dtype=torch.float32)
    dims = 1 if x.dim() in (2, 3) else tuple(range(1, x.dim()))
    return torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=torch.float32)


@CLIPPERS.register("agc")
class AGC(Clipper):
    name = "agc"
    scales_itself = True  # unit-wise (per row): no per-tensor coefficient could stand for it

    def __init__(self, *, clip_val: float = 0.01, param_eps: float = 1e-3, grad_eps: float = 1e-6,
                 exclude: Sequence[str] = ("lm_head",)):
        check_number("clip_val", clip_val, low=0.0, low_open=True)
        check_number("param_eps", param_eps, low=0.0)
        check_number("grad_eps", grad_eps, low=0.0)
        require("exclude", not isinstance(exclude, str) and all(isinstance(e, str) for e in exclude),
                f"must be a list of name fragments, got {exclude!r}")
        super().__init__(clip_val=clip_val, param_eps=param_eps, grad_eps=grad_eps, exclude=list(exclude))
        self.clip_val, self.param_eps, self.grad_eps = float(clip_val), float(param_eps), float(grad_eps)
        self.exclude = tuple(exclude)
        self._included: dict[str, bool] = {}

    def _on_bind(self, names: tuple[str, ...]) -> None:
        head = self._binding.output_head
        self._included = {name: name not in head and not any(fragment in name for fragment in self.exclude)
                          for name in names}

    def _whole_params(self, params: list[Tensor]) -> list[int]:
        return [i for i, param in enumerate(params) if param.dim() <= 1]

    def _clip_tensor(self, param: Tensor, grad: Tensor, finite: Tensor, whole: tuple[Tensor, Tensor] | None = None
                     ) -> tuple[Tensor, Tensor, Tensor]:
        """Clip one tensor unit-wise in place: (smallest unit coefficient, largest ratio, post-clip norm).
        `whole` gives the full (parameter, gradient) norms of a sharded one-unit tensor."""
        param_norms, grad_norms = whole if whole is not None else (unit_norms(param.detach()), unit_norms(grad))
        max_norms = param_norms.clamp_min(self.param_eps) * self.clip_val
        floored = grad_norms.clamp_min(self.grad_eps)
        scale = torch.where(finite & (floored > max_norms), max_norms / floored, 1.0)
        grad.mul_(scale)
        return scale.min(), (floored / max_norms).max(), torch.linalg.vector_norm(scale * grad_norms)

    def _decide(self, batch: GradBatch, finite: Tensor, loss: Tensor | None) -> Decision:
        untouched = (torch.ones((), device=batch.device), torch.full((), math.nan, device=batch.device))

        def whole(i: int, grad_norm: Tensor) -> tuple[Tensor, Tensor] | None:
            return (batch.param_norms[i], grad_norm) if i in batch.param_norms else None

        results = [  # an empty local shard (an expert another rank holds) has no units to clip
            self._clip_tensor(param, grad, finite, whole(i, norm)) if self._included[name] and grad.numel()
            else (*untouched, norm)
            for i, (name, param, grad, norm) in enumerate(
                zip(batch.names, batch.params, batch.grads, batch.norms.unbind(0), strict=True))
        ]
        coefs, ratios, post_norms = (torch.stack(column) for column in zip(*results, strict=True))
        return Decision(coefs=coefs, ratios=ratios, applied=True, post_norms=post_norms)
