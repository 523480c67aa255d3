"""The faults of one run, applied at the loop's seams.

    model = faults.at_model_build(model)                    # components: lowp_norm
    LambdaLR(optimizer, base) -> base(i) * faults.lr_factor(i + 1)   # the schedule: lr_spike
    batch = faults.before_forward(batch, step, micro)       # per micro-batch: data_outlier, lowp_norm switch
    faults.after_backward(model, step)                      # before clipping: grad_scale, bitflip
    metrics.update(faults.events(step))                     # metrics.jsonl: "fault" at the steps they act
    summary["faults"] = faults.summary(total_steps)

Each seam loops only over the triggers that define it, so an empty FaultSet does no work.
"""

from __future__ import annotations

from typing import Any

from adagc_repro.faults.base import SEAMS, FaultContext, Trigger


class FaultSet:
    def __init__(self, triggers: list[Trigger], context: FaultContext):
        self.triggers = triggers
        self.context = context
        self._at = {seam: [t for t in triggers if t.defines(seam)] for seam in SEAMS}

    def __bool__(self) -> bool:
        return bool(self.triggers)

    @property
    def changes_batches(self) -> bool:
        return bool(self._at["on_batch"])

    @property
    def changes_lr(self) -> bool:
        return bool(self._at["lr_factor"])

    def at_model_build(self, model):
        config = model.config
        self.context.vocab_size = (getattr(config, "text_config", None) or config).vocab_size  # CLIP: its text tower
        for trigger in self._at["on_model"]:
            trigger.on_model(model, self.context)
        return model

    def lr_factor(self, step: int) -> float:
        factor = 1.0
        for trigger in self._at["lr_factor"]:
            factor *= trigger.lr_factor(step)
        return factor

    def before_forward(self, batch: dict[str, Any], step: int, micro: int = 0) -> dict[str, Any]:
        for trigger in self._at["on_batch"]:
            batch = trigger.on_batch(batch, step, micro, self.context)
        return batch

    def after_backward(self, model, step: int) -> None:
        acting = [t for t in self._at["on_gradients"] if t.active(step)]
        if not acting:
            return
        grads = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
        for trigger in acting:
            trigger.on_gradients(grads, step, self.context)

    def events(self, step: int) -> dict[str, Any]:
        fired = {t.name: t.event(step) for t in self.triggers if t.logs_at(step)}
        return {"fault": fired} if fired else {}

    def summary(self, total_steps: int) -> list[dict[str, Any]]:
        return [trigger.record(total_steps) for trigger in self.triggers]
