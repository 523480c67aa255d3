"""transformers `TrainerCallback` that applies any clipper right before each optimizer step.

    from adagc_repro.clipping import build_clipper
    from adagc_repro.integrations.hf import ClipperCallback
    trainer = Trainer(model=model, args=TrainingArguments(..., max_grad_norm=0.0),
                      callbacks=[ClipperCallback(build_clipper("adagc"))])

The clipper runs in `on_pre_optimizer_step`: after gradient accumulation, AMP unscaling and Trainer's own
clipping, before `optimizer.step()`. Trainer's global clipping would stack on top of the clipper, so the
callback turns it off (sets `args.max_grad_norm = 0`, with a warning) when training starts. Trainer cannot
skip an optimizer step from a callback; on a step the clipper marks as skipped (non-finite gradient) the
callback sets every gradient to None, so `optimizer.step()` leaves those parameters (and their optimizer
state) untouched. The learning-rate schedule still advances. Clippers that need the loss (`skip_step`)
cannot be used here: Trainer does not pass the loss to callbacks.
The last step's clip metrics (`clip/*`, `grad_norm_post`) and the skip counters are added to each logged
entry. Trainer checkpoints do not hold the clipper's state, so each save also writes `clipper.pt` into the
checkpoint folder. To resume, call `callback.clipper.load_state_dict(torch.load(<checkpoint>/"clipper.pt"))`
before `trainer.train(resume_from_checkpoint=<checkpoint>)`; the state is applied at the first step.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from adagc_repro.clipping import Clipper, ClipStats
from adagc_repro.errors import ConfigError

logger = logging.getLogger(__name__)
CLIPPER_STATE_FILE = "clipper.pt"


class ClipperCallback(TrainerCallback):
    def __init__(self, clipper: Clipper):
        if clipper.needs_loss:
            raise ConfigError("clip.name", f"'{clipper.name}' needs the step's loss, which Trainer does not "
                              "give callbacks; use it in a custom loop")
        self.clipper = clipper
        self.last_stats: ClipStats | None = None
        self.skipped_steps = 0
        self.nonfinite_skips = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs: Any):
        if args.max_grad_norm and args.max_grad_norm > 0:
            logger.warning("ClipperCallback: turning off Trainer's max_grad_norm=%s; the '%s' clipper replaces it",
                           args.max_grad_norm, self.clipper.name)
            args.max_grad_norm = 0.0
        if model is not None:  # before the first backward, as strategies that watch micro-batches need
            self.clipper.attach(model)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs: Any):
        stats = self.clipper(model)
        self.last_stats = stats
        if bool(stats.skipped):
            self.skipped_steps += 1
            self.nonfinite_skips += stats.skip_reason == "nonfinite"
            for param in model.parameters():
                param.grad = None

    def on_log(self, args, state, control, logs=None, **kwargs: Any):
        if self.last_stats is None or not state.log_history or "loss" not in (logs or {}):
            return  # only training-step entries, not the end-of-training summary
        extra = {**self.last_stats.as_metrics(), "clip/skipped_steps": self.skipped_steps,
                 "clip/nonfinite_skips": self.nonfinite_skips}
        extra.pop("grad_norm", None)  # Trainer logs its own grad_norm (the same pre-clip value)
        state.log_history[-1].update(extra)
        if logs is not None:
            logs.update(extra)

    def on_save(self, args, state, control, **kwargs: Any):
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not state.is_world_process_zero or not os.path.isdir(folder):
            return
        path = os.path.join(folder, CLIPPER_STATE_FILE)
        torch.save(self.clipper.state_dict(), path + ".tmp")
        os.replace(path + ".tmp", path)
