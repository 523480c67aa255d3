"""Epoch accounting: how many passes over the training split a run makes, said before it starts."""

from __future__ import annotations

import warnings

from adagc_repro.errors import ConfigError


class DataRepeatWarning(UserWarning):
    """The run reads the training split more than once."""


def epoch_of(steps_done: int, samples_per_step: int, num_blocks: int) -> float:
    """Passes over the training split after `steps_done` optimizer steps (the `data/epoch` metric)."""
    return steps_done * samples_per_step / num_blocks


def check_epochs(steps: int, samples_per_step: int, num_blocks: int, block_tokens: int, max_epochs: float | None) -> None:
    """Warn (or with `data.max_epochs`, fail) when steps × tokens per step exceed the training split."""
    passes = epoch_of(steps, samples_per_step, num_blocks)
    if passes <= 1.0:
        return
    numbers = (f"{steps:,} steps × {samples_per_step * block_tokens:,} tokens per step = "
               f"{steps * samples_per_step * block_tokens:,} tokens; the training split holds "
               f"{num_blocks * block_tokens:,}, so the run makes {passes:.2f} passes over it")
    if max_epochs is not None and passes > float(max_epochs):
        raise ConfigError("data.max_epochs", f"{numbers} (more than {max_epochs})")
    warnings.warn(f"data repeats: {numbers}", DataRepeatWarning, stacklevel=2)


def epoch_summary(steps_done: int, samples_per_step: int, num_blocks: int, block_tokens: int) -> dict[str, float | int]:
    """Tokens seen, distinct tokens seen (each pass is a permutation of the blocks) and passes."""
    samples = steps_done * samples_per_step
    return {
        "data_train_tokens": num_blocks * block_tokens,
        "data_tokens_seen": samples * block_tokens,
        "data_unique_tokens": min(samples, num_blocks) * block_tokens,
        "data_epochs": samples / num_blocks,
    }
