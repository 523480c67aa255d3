"""Wrap a built model for its parallel layout, in torchtitan's order: activation checkpointing, then
per-block compile, then DDP or FSDP2. Returns the module the loop calls for forward/backward; the
model's own parameter names (used by the optimizer groups and the clippers) stay unchanged.

FSDP2 shards every decoder block (the model's `_no_split_modules` classes), then the root, with fp32
master weights, `param_dtype` for compute (bf16 under bf16 precision) and fp32 gradient reduction.
Gradients are averaged over ranks, as DDP does, so the per-rank loss is the mean over its own share.
"""

from __future__ import annotations

import torch
from torch import nn

from adagc_repro.distributed.collectives import world_size
from adagc_repro.errors import ConfigError

STRATEGIES = ("none", "ddp", "fsdp2")
ACTIVATION_CHECKPOINTING = ("none", "full", "selective")


def parallelize(model: nn.Module, *, strategy: str, activation_checkpointing: str, compile: bool,
                precision: str, device: torch.device, bucket_cap_mb: int | None = None) -> nn.Module:
    apply_activation_checkpointing(model, activation_checkpointing)
    if strategy == "fsdp2" and world_size() > 1:
        blocks = decoder_blocks(model)
        if compile:
            for block in blocks:
                block.compile()
        shard_fsdp2(model, blocks, param_dtype=_compute_dtype(precision, device), device=device)
        return model
    if strategy == "ddp" and world_size() > 1:
        model = _ddp(model, device, bucket_cap_mb)
    return torch.compile(model) if compile else model


def _ddp(model: nn.Module, device: torch.device, bucket_cap_mb: int | None) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    class ModelDDP(DistributedDataParallel):
        """DDP that still answers the model's attributes, as torch.compile's wrapper does: the loss reads
        the model family from `.config` and CLIP's temperature from `.logit_scale`."""

        def __getattr__(self, name: str):
            try:
                return super().__getattr__(name)
            except AttributeError:
                if name == "module":  # not set yet (inside DDP's constructor): nothing to forward to
                    raise
                return getattr(self.module, name)

    # Gradients as views of the buckets: no copy of every gradient into and out of them.
    return ModelDDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                    bucket_cap_mb=bucket_cap_mb, gradient_as_bucket_view=True)


def apply_activation_checkpointing(model: nn.Module, mode: str) -> None:
    """Recompute block activations in backward through the model's own (transformers) switch.

    `full` checkpoints every decoder block, `selective` every second one (torchtitan's layer-wise
    selective mode): about half the activation memory saved for about half the recompute.
    """
    if mode not in ACTIVATION_CHECKPOINTING:
        raise ConfigError("train.activation_checkpointing", f"unknown value {mode!r}", ACTIVATION_CHECKPOINTING)
    if mode == "none":
        return
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if mode == "selective":
        for block in decoder_blocks(model)[1::2]:
            block.gradient_checkpointing = False


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformers model: instances of its `_no_split_modules` classes."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [module for module in model.modules() if type(module).__name__ in names]
    if not blocks:
        raise ConfigError("parallel.name", f"cannot find the blocks of {type(model).__name__} to shard", ["ddp", "none"])
    return blocks


def shard_fsdp2(model: nn.Module, blocks: list[nn.Module], *, param_dtype: torch.dtype, device: torch.device) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    _make_scalars_1d(model)
    mesh = init_device_mesh(device.type, (world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


SCALARS_MADE_1D = "scalar_parameters_made_1d"  # model attribute: the names `_make_scalars_1d` reshaped


def _make_scalars_1d(model: nn.Module) -> None:
    """fully_shard rejects 0-d parameters (CLIP's logit_scale): give them shape [1], noting their names
    so that an export restores the model family's own shapes (`with_scalar_shapes`)."""
    names = []
    for module_name, module in model.named_modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param.dim() == 0:
                setattr(module, name, nn.Parameter(param.detach().reshape(1), requires_grad=param.requires_grad))
                names.append(f"{module_name}.{name}" if module_name else name)
    setattr(model, SCALARS_MADE_1D, tuple(names))


def with_scalar_shapes(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A full state dict of `model` with the parameters FSDP2 needed as [1] back to 0-d, so that
    `from_pretrained` of the model family loads it."""
    return {key: value.reshape(()) if key in getattr(model, SCALARS_MADE_1D, ()) else value
            for key, value in state.items()}


def _compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.bfloat16 if bf16 else torch.float32
