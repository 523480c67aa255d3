"""Skip the optimizer update on loss or grad-norm spikes (OLMo-core `SkipStepOptimizer`; spec §8.4).

The last `rolling_interval_length` finite losses and pre-clip global norms are kept (the current value
excluded). Once at least max(20, rolling_interval_length // 2) values including the current one are
known, the step is a spike when (x − mean) / std > sigma_factor for the loss or the grad norm, with the
sample std: one-sided, as OLMo-core (which steps when x − mean <= sigma_factor·std), so a sharp drop never
skips; `two_sided=true` also skips on drops (|x − mean|). A spike sets `stats.skipped` (reason "spike");
the values still join the window, as in OLMo-core. OLMo-core writes the test as `z <= sigma` to step, so a NaN z (zero std) also skips there; here
only z > sigma skips. Optionally the gradients are also clipped globally at `max_norm`.
Needs the loss: `clipper(model, loss=loss)`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from adagc_repro.clipping.base import (
    CLIPPERS,
    Clipper,
    Decision,
    GradBatch,
    check_bool,
    check_int,
    check_number,
)
from adagc_repro.clipping.global_clip import global_coef

MIN_VALUES = 20  # OLMo-core never skips before this many values (including the current one)


@CLIPPERS.register("skip_step")
class SkipStep(Clipper):
    name = "skip_step"
    needs_loss = True

    def __init__(self, *, rolling_interval_length: int = 128, sigma_factor: float = 6.0,
                 max_norm: float | None = None, two_sided: bool = False):
        check_int("rolling_interval_length", rolling_interval_length, low=MIN_VALUES - 1)
        check_number("sigma_factor", sigma_factor, low=0.0, low_open=True)
        if max_norm is not None:
            check_number("max_norm", max_norm, low=0.0, low_open=True)
        check_bool("two_sided", two_sided)
        super().__init__(rolling_interval_length=rolling_interval_length, sigma_factor=sigma_factor,
                         max_norm=max_norm, two_sided=two_sided)
        self.two_sided = two_sided
        self.window = rolling_interval_length
        self.min_values = max(MIN_VALUES, rolling_interval_length // 2)
        self.sigma_factor = float(sigma_factor)
        self.max_norm = None if max_norm is None else float(max_norm)

    def _initial_state(self, n_tensors: int, device: torch.device) -> dict[str, Tensor]:
        return {"losses": torch.zeros(self.window, device=device),
                "grad_norms": torch.zeros(self.window, device=device)}

    def _zscore(self, window: Tensor, valid: Tensor, count: Tensor, value: Tensor) -> Tensor:
        """(value − mean) / std over the valid window entries; |·| when two-sided."""
        mean = torch.where(valid, window, 0.0).sum() / count
        variance = torch.where(valid, (window - mean) ** 2, 0.0).sum() / (count - 1)
        deviation = value - mean
        return (deviation.abs() if self.two_sided else deviation) / variance.sqrt()

    def _decide(self, batch: GradBatch, finite: Tensor, loss: Tensor | None) -> Decision:
        recorded = self._state["step"]
        stored = torch.clamp(recorded, max=self.window)
        slots = torch.arange(self.window, device=batch.device)
        valid = slots < stored
        losses, grad_norms = self._state["losses"], self._state["grad_norms"]
        loss_z = self._zscore(losses, valid, stored, loss)
        norm_z = self._zscore(grad_norms, valid, stored, batch.total)
        active = stored + 1 >= self.min_values
        spike = active & ((loss_z > self.sigma_factor) | (norm_z > self.sigma_factor))
        newest = slots == recorded % self.window
        nan = torch.full((), torch.nan, device=batch.device)
        return Decision(
            coefs=None if self.max_norm is None else global_coef(batch.total, self.max_norm),
            spike=spike,
            state={"losses": torch.where(newest, loss, losses), "grad_norms": torch.where(newest, batch.total, grad_norms)},
            extras={"skip_loss_z": torch.where(active, loss_z, nan), "skip_grad_norm_z": torch.where(active, norm_z, nan)},
        )
