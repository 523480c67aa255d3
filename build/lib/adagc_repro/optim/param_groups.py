"""Weight-decay parameter groups by rule: 1-D tensors and name patterns are exempt from decay."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatch
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

# Embedding tables (Llama/Mixtral/Qwen3 `embed_tokens`, GPT-2 `wte`/`wpe`, CLIP `*_embedding`).
# Norm gains, biases and scalars are 1-D or 0-D and are exempt by rank unless `decay_1d` is set.
DEFAULT_NO_DECAY: tuple[str, ...] = ("*embed*", "*.wte.*", "*.wpe.*")


def exempt_from_decay(name: str, param: nn.Parameter, no_decay: Sequence[str], decay_1d: bool) -> bool:
    return (param.ndim < 2 and not decay_1d) or any(fnmatch(name, pattern) for pattern in no_decay)


def decay_groups(
    named_params: Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    no_decay: Sequence[str] = DEFAULT_NO_DECAY,
    decay_1d: bool = False,
    **group_options: Any,
) -> list[dict[str, Any]]:
    """Two param groups, `decay` and `no_decay` (weight_decay 0); empty ones are dropped.

    `group_options` (e.g. a per-group lr) are copied into both groups.
    """
    decay, exempt = [], []
    for name, param in named_params:
        if param.requires_grad:
            (exempt if exempt_from_decay(name, param, no_decay, decay_1d) else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "group": "decay", **group_options},
        {"params": exempt, "weight_decay": 0.0, "group": "no_decay", **group_options},
    ]
    return [group for group in groups if group["params"]]
