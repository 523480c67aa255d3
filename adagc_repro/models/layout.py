"""Parameter roles that names alone do not tell, derived from the module tree: stacked experts and the
output head. Clippers and optimizers read them here instead of branching on the model family.

- Stacked experts: an MoE layer may store all its experts in one tensor (experts × out × in), as
  transformers' Mixtral and Qwen3-MoE expert modules do. Per-tensor methods treat each expert's slice
  as its own matrix. They are found generically: a module with an integer `num_experts` attribute
  whose own 3-D parameters have that many entries along dim 0.
- Output head: the weight `get_output_embeddings()` returns. When it is tied to the input embedding
  (GPT-2), `named_parameters()` lists it once, under the embedding's name (`transformer.wte.weight`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor, nn


def stacked_experts(model: nn.Module) -> dict[str, int]:
    """Parameter name → number of experts, for every parameter that stacks experts along dim 0."""
    found = {}
    for module_name, module in model.named_modules():
        count = getattr(module, "num_experts", None)
        if not isinstance(count, int) or isinstance(count, bool):
            continue
        for name, param in module.named_parameters(recurse=False):
            if param.ndim == 3 and param.shape[0] == count:
                found[f"{module_name}.{name}" if module_name else name] = count
    return found


def output_head(model: nn.Module) -> Tensor | None:
    """The output head's weight (the embedding table itself when tied), or None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return None if head is None else head.weight


def output_head_names(model: nn.Module) -> frozenset[str]:
    """The name(s) under which `named_parameters()` lists the output head's weight."""
    weight = output_head(model)
    return frozenset(name for name, param in model.named_parameters() if param is weight)
