"""ZClip: z-score clipping of the global norm against its EMA mean and variance (arXiv 2504.02507; spec §4).

Same results as the official `zclip` package (1.0.0) for the same arguments, with its quirks:
- warm-up: the first max(warmup_steps, 1) steps collect the raw global norm (and clip at max_grad_norm
  when it is set); the last of them initialises μ and the *population* variance σ² from that buffer;
- z = (‖g‖ − μ)/(σ + eps); a spike is z > z_thresh ("zscore") or ‖g‖ > μ + z_thresh·σ ("percentile");
  the target norm is μ + z_thresh·σ/(z/z_thresh) ("adaptive_scaling", the paper's reciprocal rule) or μ
  ("mean"), or μ + z_thresh·σ in percentile mode;
- `clip_factor` multiplies the whole adaptive_scaling target, as the code does (its README says it
  multiplies only the z_thresh·σ term);
- max_grad_norm, when set, always caps the target, also on steps without a spike;
- the EMA takes the target on spike steps and the raw norm otherwise; the variance uses the *new* mean;
  `skip_update_on_spike` leaves the EMA alone on spike steps (the optimizer step still happens).
Statistics are kept in float64 like the package's Python floats. Unlike the package, the norm is taken in
fp32 for bf16 gradients, no host sync happens, and non-finite steps change nothing (spec §4.6).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from adagc_repro.clipping.base import (
    CLIPPERS,
    Clipper,
    Decision,
    GradBatch,
    check_bool,
    check_choice,
    check_int,
    check_number,
)
from adagc_repro.clipping.global_clip import TORCH_EPS, global_coef

MODES = ("zscore", "percentile")
CLIP_OPTIONS = ("adaptive_scaling", "mean")


@CLIPPERS.register("zclip")
class ZClip(Clipper):
    name = "zclip"

    def __init__(self, *, alpha: float = 0.97, z_thresh: float = 2.5, max_grad_norm: float | None = None,
                 eps: float = 1e-6, warmup_steps: int = 25, mode: str = "zscore",
                 clip_option: str = "adaptive_scaling", clip_factor: float = 1.0, skip_update_on_spike: bool = False):
        check_number("alpha", alpha, low=0.0, high=1.0, high_open=True)
        check_number("z_thresh", z_thresh, low=0.0, low_open=True)
        if max_grad_norm is not None:
            check_number("max_grad_norm", max_grad_norm, low=0.0, low_open=True)
        check_number("eps", eps, low=0.0)
        check_int("warmup_steps", warmup_steps)
        check_choice("mode", mode, MODES)
        check_choice("clip_option", clip_option, CLIP_OPTIONS)
        check_number("clip_factor", clip_factor, low=0.0, low_open=True)
        check_bool("skip_update_on_spike", skip_update_on_spike)
        super().__init__(alpha=alpha, z_thresh=z_thresh, max_grad_norm=max_grad_norm, eps=eps,
                         warmup_steps=warmup_steps, mode=mode, clip_option=clip_option, clip_factor=clip_factor,
                         skip_update_on_spike=skip_update_on_spike)
        self.alpha, self.z_thresh, self.eps, self.clip_factor = float(alpha), float(z_thresh), float(eps), float(clip_factor)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.mode, self.clip_option, self.skip_update_on_spike = mode, clip_option, skip_update_on_spike
        self.buffer_size = max(warmup_steps, 1)  # the package initialises on its first call when warmup_steps=0

    def _initial_state(self, n_tensors: int, device: torch.device) -> dict[str, Tensor]:
        zero = torch.zeros((), dtype=torch.float64, device=device)
        return {"buffer": torch.zeros(self.buffer_size, dtype=torch.float64, device=device), "mean": zero, "var": zero}

    def _target_norm(self, total: Tensor, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(z-score, spike flag, target norm on a spike) for the package's mode and clip_option."""
        z = (total - mean) / (std + self.eps)
        if self.mode == "percentile":
            threshold = mean + self.z_thresh * std
            return z, total > threshold, threshold
        if self.clip_option == "mean":
            return z, z > self.z_thresh, mean
        eta = z / self.z_thresh  # the further out the spike, the closer the target is pulled to μ
        return z, z > self.z_thresh, (mean + (self.z_thresh * std) / eta) * self.clip_factor

    def _decide(self, batch: GradBatch, finite: Tensor, loss: Tensor | None) -> Decision:
        state, total = self._state, batch.total.double()
        seen = state["step"]
        in_warmup = seen < self.buffer_size

        # Warm-up: record the raw norm; the last warm-up step initialises μ and the population σ².
        slot = torch.arange(self.buffer_size, device=batch.device) == seen
        buffer = torch.where(slot, total, state["buffer"])
        mean_init = buffer.mean()
        var_init = (buffer - mean_init).pow(2).mean()
        initialise = seen + 1 == self.buffer_size
        no_clip = torch.ones((), device=batch.device)
        coef_warm = no_clip if self.max_grad_norm is None else global_coef(batch.total, self.max_grad_norm)

        # After warm-up: z-score test against μ, σ; scale down to the target (capped by max_grad_norm).
        mean, var = state["mean"], state["var"]
        std = var.sqrt()
        z, spike, target = self._target_norm(total, mean, std)
        spike = spike & ~in_warmup
        effective = torch.where(spike, target, total)
        if self.max_grad_norm is not None:
            effective = torch.clamp(effective, max=self.max_grad_norm)
        coef = torch.where(total > effective, effective / (total + TORCH_EPS), 1.0).float()

        ema_input = torch.where(spike, target, total)
        mean_ema = self.alpha * mean + (1 - self.alpha) * ema_input
        var_ema = self.alpha * var + (1 - self.alpha) * (ema_input - mean_ema) ** 2
        keep = spike if self.skip_update_on_spike else torch.zeros_like(spike)
        mean_new = torch.where(in_warmup, torch.where(initialise, mean_init, mean), torch.where(keep, mean, mean_ema))
        var_new = torch.where(in_warmup, torch.where(initialise, var_init, var), torch.where(keep, var, var_ema))

        nan = torch.full((), math.nan, dtype=torch.float64, device=batch.device)
        return Decision(
            coefs=torch.where(in_warmup, coef_warm, coef),
            state={"buffer": buffer, "mean": mean_new, "var": var_new},
            extras={
                "zclip_mean": torch.where(in_warmup, nan, mean),
                "zclip_std": torch.where(in_warmup, nan, std),
                "z": torch.where(in_warmup, nan, z),
                "zclip_spike": spike.float(),
            },
        )
