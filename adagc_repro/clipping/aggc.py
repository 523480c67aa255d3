"""AGGC: adaptive group-wise clipping with groups = functional module types across layers (spec §5).

Every layer's q_proj forms one group, every k_proj another, and so on (`module_type`, the released
code's grouping). Per group j and optimizer step t, with progress p = (t-1)/total_steps (the released
code passes the number of completed steps):

1. multipliers (a_low, a_high): the initial values until p = bounds_switch_ratio, the late values from
   p = switch + bounds_transition_ratio, linear in between (`bounds_schedule="linear"`; "none" keeps them);
2. interval from the EMA S of the previous step (S_0 = 0): L = max(min_norm, a_low·S), U = max(0, a_high·S);
3. n > U (U > 0): c = U/(n + 1e-12), floored at max_down_scale when that is > 0;
   otherwise with raise_small, n < L (L > 0): c = L/(n + 1e-12) (1 if n = 0), capped at max_up_scale when > 0;
   else c = 1. Every gradient of the group is multiplied by c;
4. S ← β·S + (1 − β)·c·n.

The group norm is √(Σ‖g‖² + 1e-16) and the comparisons use the released code's 1e-12 margins. The general
rule (default) checks a_low ≤ 1 ≤ a_high; the released scripts use a_high < a_low, which leaves no
pass-through band, so each group is scaled every step by a factor in [max_down, max_up]: presets
`aggc_reference` (LoRA SFT scripts) and `aggc_reference_grpo` (GRPO script) reproduce them with
check_bounds=false. Since S starts at 0, the first ~1/(1 − β) steps are scaled down to the max_down floor:
an implicit warm-up. Parameters whose name gives no module type are not clipped. Group statistics are
float64, like the released code's Python floats.

Where the group norm comes from (`norm_source`): "reduced" (default) takes the norms of the gradients the
optimizer will apply, after accumulation. "micro_batches" is what the released scripts do and what the
`aggc_reference*` presets use: a backward hook on every parameter adds ‖g‖² of each micro-batch's own
gradient, so n² = Σ over micro-batches of Σ over the group's tensors of ‖g_micro‖² (averaged over ranks
when distributed), which differs from ‖Σ g_micro‖² as soon as there is gradient accumulation. The hooks
are registered by `clipper.attach(model)` before the first backward; the scale still multiplies the
accumulated gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from adagc_repro.clipping import norms as norm_ops
from adagc_repro.clipping.base import (
    CLIPPERS,
    Clipper,
    Decision,
    GradBatch,
    check_bool,
    check_choice,
    check_int,
    check_number,
    require,
)

MODULE_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj", "up_proj",
                "c_attn", "c_proj", "w1", "w2", "w3", "lm_head", "embed_tokens")
SCHEDULES = ("none", "linear")
NORM_SOURCES = ("reduced", "micro_batches")
MARGIN = 1e-12  # the released code's comparison and division margin
NORM_FLOOR = 1e-16  # added to the squared group norm, as released


def module_type(name: str) -> str | None:
    """The released code's group of a parameter: a known module type, else the second-to-last name token."""
    for kind in MODULE_TYPES:
        if f".{kind}." in name or name.endswith((f".{kind}.weight", f".{kind}.bias")):
            return kind
    tokens = name.split(".")
    if len(tokens) >= 2 and not tokens[-2].isdigit() and tokens[-2] != "layers":
        return tokens[-2]
    return None


@CLIPPERS.register("aggc")
class AGGC(Clipper):
    name = "aggc"

    def __init__(self, *, beta: float = 0.98, low_mult: float = 0.9, high_mult: float = 1.1,
                 low_mult_late: float | None = None, high_mult_late: float | None = None,
                 bounds_schedule: str = "none", bounds_switch_ratio: float = 0.5,
                 bounds_transition_ratio: float = 0.2, min_norm: float = 0.0, raise_small: bool = False,
                 max_up_scale: float = 1.1, max_down_scale: float = 0.9, total_steps: int | None = None,
                 check_bounds: bool = True, norm_source: str = "reduced"):
        check_number("beta", beta, low=0.0, high=1.0, high_open=True)
        low_mult_late = low_mult if low_mult_late is None else low_mult_late
        high_mult_late = high_mult if high_mult_late is None else high_mult_late
        for key, value in (("low_mult", low_mult), ("high_mult", high_mult), ("low_mult_late", low_mult_late),
                           ("high_mult_late", high_mult_late), ("min_norm", min_norm)):
            check_number(key, value, low=0.0)
        check_choice("bounds_schedule", bounds_schedule, SCHEDULES)
        check_number("bounds_switch_ratio", bounds_switch_ratio, low=0.0, high=1.0)
        check_number("bounds_transition_ratio", bounds_transition_ratio, low=0.0, high=1.0)
        check_bool("raise_small", raise_small)
        check_number("max_up_scale", max_up_scale, low=0.0)
        require("max_up_scale", max_up_scale == 0 or max_up_scale >= 1, "must be 0 (off) or >= 1")
        check_number("max_down_scale", max_down_scale, low=0.0, high=1.0)
        check_bool("check_bounds", check_bounds)
        check_choice("norm_source", norm_source, NORM_SOURCES)
        if bounds_schedule == "linear":
            require("total_steps", total_steps is not None, "the linear bounds schedule needs the run length")
        if total_steps is not None:
            check_int("total_steps", total_steps, low=1)
        if check_bounds:
            for low_key, low, high_key, high in (("low_mult", low_mult, "high_mult", high_mult),
                                                 ("low_mult_late", low_mult_late, "high_mult_late", high_mult_late)):
                require(low_key, low <= 1.0, f"must be <= 1 (got {low}); set check_bounds=false for the released scripts")
                require(high_key, high >= 1.0, f"must be >= 1 (got {high}); set check_bounds=false for the released scripts")
        super().__init__(beta=beta, low_mult=low_mult, high_mult=high_mult, low_mult_late=low_mult_late,
                         high_mult_late=high_mult_late, bounds_schedule=bounds_schedule,
                         bounds_switch_ratio=bounds_switch_ratio, bounds_transition_ratio=bounds_transition_ratio,
                         min_norm=min_norm, raise_small=raise_small, max_up_scale=max_up_scale,
                         max_down_scale=max_down_scale, total_steps=total_steps, check_bounds=check_bounds,
                         norm_source=norm_source)
        self.beta, self.min_norm = float(beta), float(min_norm)
        self.low, self.high = (float(low_mult), float(low_mult_late)), (float(high_mult), float(high_mult_late))
        self.scheduled = bounds_schedule == "linear"
        self.switch, self.width = float(bounds_switch_ratio), max(1e-6, float(bounds_transition_ratio))
        self.raise_small = raise_small
        self.max_up, self.max_down = float(max_up_scale), float(max_down_scale)
        self.total_steps = total_steps
        self.norm_source = norm_source
        self.group_names: tuple[str, ...] = ()
        self._group_ids: Tensor | None = None  # group per bound tensor; len(group_names) = not clipped
        self._micro_squares: Tensor | None = None  # Σ over this step's micro-batches of ‖g‖², per bound tensor
        self._micro_recorded = False
        self._hooks: list = []

    def _on_bind(self, names: tuple[str, ...]) -> None:
        kinds = [module_type(name) for name in names]
        self.group_names = tuple(dict.fromkeys(kind for kind in kinds if kind is not None))
        index = {kind: i for i, kind in enumerate(self.group_names)}
        self._group_ids = torch.tensor([index.get(kind, len(index)) for kind in kinds], dtype=torch.long)

    def _initial_state(self, n_tensors: int, device: torch.device) -> dict[str, Tensor]:
        return {"ema": torch.zeros(len(self.group_names), dtype=torch.float64, device=device)}

    def _on_attach(self, binding) -> None:
        if self.norm_source != "micro_batches":
            return
        if binding.sharded:
            raise ValueError("aggc norm_source=micro_batches needs unsharded (non-DTensor) parameters")
        for handle in self._hooks:
            handle.remove()
        self._micro_squares = torch.zeros(len(binding.names), dtype=torch.float64, device=binding.params[0].device)
        self._hooks = [param.register_hook(self._recorder(binding.positions(i), binding.counts[i] > 0))
                       for i, param in enumerate(binding.params)]

    def _recorder(self, positions: range, stacked: bool):
        """Backward hook adding one micro-batch's squared norm(s) of a parameter (one per expert if stacked)."""
        def record(grad: Tensor) -> None:
            dims = tuple(range(1, grad.dim())) if stacked else None
            norms = torch.linalg.vector_norm(grad.detach(), dim=dims, dtype=torch.float32)
            self._micro_squares[positions.start:positions.stop] += norms.double().square()
            self._micro_recorded = True
        return record

    def _tensor_squares(self, batch: GradBatch) -> Tensor:
        """Squared norm of every present tensor: of the reduced gradient, or summed over micro-batches."""
        if self.norm_source == "reduced":
            return batch.norms.double() ** 2
        if not self._micro_recorded:
            raise ValueError("aggc norm_source=micro_batches recorded no backward: call clipper.attach(model) "
                             "before the first backward")
        squares = norm_ops.mean_over_ranks(self._micro_squares.clone())
        self._micro_squares.zero_()
        self._micro_recorded = False
        return batch.gather(squares)

    def _multipliers(self, completed_steps: Tensor) -> tuple[Tensor, Tensor]:
        """(a_low, a_high) at progress completed_steps / total_steps."""
        (low, low_late), (high, high_late) = self.low, self.high
        if not self.scheduled:
            one = torch.ones((), dtype=torch.float64, device=completed_steps.device)
            return one * low, one * high
        progress = torch.clamp(completed_steps.double() / max(1, self.total_steps), 0.0, 1.0)
        weight = torch.clamp((progress - self.switch) / self.width, 0.0, 1.0)
        return low * (1 - weight) + low_late * weight, high * (1 - weight) + high_late * weight

    def _decide(self, batch: GradBatch, finite: Tensor, loss: Tensor | None) -> Decision:
        n_groups = len(self.group_names)
        if self._group_ids.device != batch.device:
            self._group_ids = self._group_ids.to(batch.device)
        group_of = batch.gather(self._group_ids)
        squares = torch.zeros(n_groups + 1, dtype=torch.float64, device=batch.device)
        squares.index_add_(0, group_of, self._tensor_squares(batch))
        norms = torch.sqrt(squares[:n_groups] + NORM_FLOOR)

        ema = self._state["ema"]
        low_mult, high_mult = self._multipliers(self._state["step"])
        lower = torch.clamp(low_mult * ema, min=self.min_norm)
        upper = torch.clamp(high_mult * ema, min=0.0)
        down = (upper > 0) & (norms > upper + MARGIN)
        coef_down = upper / (norms + MARGIN)
        if self.max_down > 0:
            coef_down = torch.clamp(coef_down, min=self.max_down)
        coefs = torch.where(down, coef_down, 1.0)
        raised = torch.zeros_like(down)
        if self.raise_small:
            raised = ~down & (lower > 0) & (norms < lower - MARGIN)
            coef_up = torch.where(norms > 0, lower / (norms + MARGIN), 1.0)
            if self.max_up > 0:
                coef_up = torch.clamp(coef_up, max=self.max_up)
            coefs = torch.where(raised, coef_up, coefs)

        ones = torch.ones(1, dtype=torch.float64, device=batch.device)
        nans = torch.full((1,), torch.nan, dtype=torch.float64, device=batch.device)
        return Decision(
            coefs=torch.cat([coefs, ones])[group_of].float(),
            ratios=torch.cat([norms / upper, nans])[group_of].float(),
            state={"ema": self.beta * ema + (1.0 - self.beta) * coefs * norms},
            extras={
                "aggc_frac_raised": raised.double().mean(),
                "aggc_low_mult": low_mult,
                "aggc_high_mult": high_mult,
            },
        )
