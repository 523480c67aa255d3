"""Clipper interface shared by every strategy.

A step has three phases: (1) per-tensor norms in fp32 with one foreach call (`norms.py`), (2) the
strategy decides coefficients on the device, (3) the gradients are scaled in place. State lives in
device tensors and is committed with `torch.where(finite, new, old)`, so a step whose gradient (or loss)
is non-finite changes no state at all, step counter included, without a host sync. On such a step the
gradients are left untouched and `stats.skipped` is True: the caller skips the optimizer step (and zeroes
the gradients as usual). Reading `bool(stats.skipped)` is the only host sync a step needs.

Parameters are bound on the first call (names from `named_parameters()`, frozen ones dropped) and cached:
later steps only build the list of `.grad` tensors. A stacked-experts parameter is bound as one tensor per
expert (see `_Binding`).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import torch
from torch import Tensor, nn

from adagc_repro.clipping import norms as norm_ops
from adagc_repro.clipping.telemetry import clip_telemetry
from adagc_repro.errors import ConfigError, check_range
from adagc_repro.registry import Registry

CLIPPERS = Registry("clipper", "clip")

SKIP_NONFINITE = "nonfinite"
SKIP_SPIKE = "spike"


# ---------------------------------------------------------------- hyperparameter checks


def require(key: str, ok: bool, problem: str, allowed: Any = None) -> None:
    """Raise a one-line ConfigError naming `clip.<key>` unless `ok`."""
    if not ok:
        raise ConfigError(f"clip.{key}", problem, allowed)


def check_number(key: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> None:
    """Check that `value` is a finite number in the interval given by `low`/`high`."""
    check_range(f"clip.{key}", value, low=low, high=high, low_open=low_open, high_open=high_open)


def check_int(key: str, value: Any, *, low: int = 0) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    require(key, ok, f"must be an integer >= {low}, got {value!r}")


def check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    require(key, value in allowed, f"unknown value {value!r}", allowed)


def check_bool(key: str, value: Any) -> None:
    require(key, isinstance(value, bool), f"must be true or false, got {value!r}")


# ---------------------------------------------------------------- per-step data


@dataclass
class GradBatch:
    """The gradients present at this step, with their fp32 norms."""

    names: tuple[str, ...]
    params: list[Tensor]  # one per bound tensor (per-expert views of stacked experts)
    grads: list[Tensor]  # tensors scaled in place (local shards for DTensor gradients)
    norms: Tensor  # fp32 [n]
    total: Tensor  # fp32 0-d global norm
    index: Tensor | None  # positions among the bound tensors; None when all are present
    sharded: bool = False  # DTensor parameters: `grads` are their local shards
    param_norms: dict[int, Tensor] = field(default_factory=dict)  # full norms the strategy asked for, by position

    @property
    def device(self) -> torch.device:
        return self.total.device

    def gather(self, values: Tensor) -> Tensor:
        """Per-bound-tensor state → entries of the tensors present at this step."""
        return values if self.index is None else values.index_select(0, self.index)

    def scatter(self, values: Tensor, present: Tensor) -> Tensor:
        """Write entries of the present tensors back into a per-bound-tensor vector."""
        return present if self.index is None else values.index_copy(0, self.index, present)


@dataclass
class Decision:
    """What a strategy decided for one step. `state` is committed only if the step is finite."""

    coefs: Tensor | None = None  # 0-d (one for all) or [n] per tensor; None: leave gradients alone
    ratios: Tensor | None = None  # per tensor norm/threshold, NaN where undefined (telemetry)
    state: dict[str, Tensor] = field(default_factory=dict)
    extras: dict[str, Tensor] = field(default_factory=dict)  # reported as clip/<key>
    spike: Tensor | None = None  # 0-d bool: skip the optimizer update (not a non-finite step)
    applied: bool = False  # the strategy already scaled the gradients itself (coefs are for stats)
    post_norms: Tensor | None = None  # per tensor post-clip norms when `applied`


@dataclass
class ClipStats:
    """Device-side statistics of one clipping step. Nothing here has been read back to the host."""

    global_norm_pre: Tensor
    global_norm_post: Tensor
    clipped_fraction: Tensor
    min_coef: Tensor
    mean_coef: Tensor
    nonfinite: Tensor  # 0-d bool
    spike: Tensor  # 0-d bool
    names: tuple[str, ...] = ()
    tensor_norms: Tensor | None = None
    coefs: Tensor | None = None
    ratios: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def skipped(self) -> Tensor:
        """0-d bool tensor: skip the optimizer step. `bool(stats.skipped)` is the step's one host sync."""
        return self.nonfinite | self.spike

    @property
    def skip_reason(self) -> str | None:
        """"nonfinite", "spike" or None (reads two flags back to the host)."""
        nonfinite, spike = torch.stack([self.nonfinite, self.spike]).tolist()
        if nonfinite:
            return SKIP_NONFINITE
        return SKIP_SPIKE if spike else None

    def metric_tensors(self) -> dict[str, Tensor]:
        """The scalar metrics as 0-d device tensors (for loops that read them back every few steps)."""
        return {
            "grad_norm": self.global_norm_pre,
            "grad_norm_post": self.global_norm_post,
            "clip/frac_clipped": self.clipped_fraction,
            "clip/min_coef": self.min_coef,
            "clip/mean_coef": self.mean_coef,
            **{f"clip/{key}": value for key, value in self.extras.items()},
        }

    def as_metrics(self) -> dict[str, float | None]:
        """Scalar metrics with one device→host transfer; non-finite values become None."""
        named = self.metric_tensors()
        device = self.global_norm_pre.device
        values = torch.stack([v.detach().to(device, torch.float64).reshape(()) for v in named.values()])
        return {k: (v if math.isfinite(v) else None) for k, v in zip(named, values.tolist(), strict=True)}

    @classmethod
    def nothing_to_clip(cls) -> ClipStats:
        zero, one, false = torch.tensor(0.0), torch.tensor(1.0), torch.tensor(False)
        return cls(zero, zero, zero, one, one, false, false)


# ---------------------------------------------------------------- parameter binding


def _split_experts(tensors: list[Tensor], counts: tuple[int, ...]) -> list[Tensor]:
    """Each stacked-experts tensor (count > 0) becomes its per-expert views along dim 0; others stay."""
    return [view for tensor, count in zip(tensors, counts, strict=True)
            for view in (tensor.unbind(0) if count else (tensor,))]


def _local_experts(param: Tensor, local: Tensor, count: int) -> list[Tensor]:
    """Per-expert views of the local shard of a `Shard(0)` stack, one per expert of the whole stack: the
    experts this rank holds, an empty view for every other one."""
    from adagc_repro.distributed.sharding import local_rows

    held, none = local_rows(param), local.narrow(0, 0, 0)
    return [local[e - held.start] if e in held else none for e in range(count)]


class _Binding:
    """Parameters resolved once: names, tensors and the index of the subset that has gradients.

    A parameter that stacks experts along dim 0 (`models.layout.stacked_experts`) is bound as one tensor
    per expert, named `<name>[e]`: norms, thresholds, state and telemetry are per expert, computed on
    views (`unbind(0)`) by the same foreach calls as every other tensor. Sharded (DTensor) parameters are
    bound through their local shards; a sharded stack through per-expert views of its local shard, empty
    for the experts other ranks hold, so the one all-reduce of squared norms gives every expert's norm.
    """

    def __init__(self, names: tuple[str, ...], params: list[Tensor], stacks: dict[str, int] | None = None,
                 output_head: frozenset[str] = frozenset()):
        self.params = params
        self.sharded = norm_ops.is_sharded(params)
        self.group = norm_ops.shard_group(params) if self.sharded else None
        stacks = stacks or {}
        self.counts = tuple(stacks.get(name, 0) for name in names)
        self.has_stacks = any(self.counts)
        self.names = tuple(expanded for name, count in zip(names, self.counts, strict=True)
                           for expanded in ([f"{name}[{e}]" for e in range(count)] if count else [name]))
        self.output_head = output_head
        self.tensors = self.views(params, params, self.counts)  # parameter views, one per bound tensor
        sizes = [max(count, 1) for count in self.counts]
        self._positions = [range(end - size, end) for end, size in zip(accumulate(sizes), sizes, strict=True)]
        self._subset_key: tuple[int, ...] | None = None
        self._subset: tuple[tuple[str, ...], list[Tensor], Tensor] | None = None

    def views(self, params: list[Tensor], tensors: list[Tensor], counts: tuple[int, ...]) -> list[Tensor]:
        """The bound tensors of `tensors` (the parameters themselves or their gradients): per-expert views
        of stacks, and local shards of sharded ones."""
        if not self.sharded:
            return _split_experts(tensors, counts) if self.has_stacks else tensors
        local = norm_ops.local_tensors(tensors)
        return [view for param, shard, count in zip(params, local, counts, strict=True)
                for view in (_local_experts(param, shard, count) if count else (shard,))]

    def same_params(self, params: list[Tensor]) -> bool:
        return len(params) == len(self.params) and all(p is q for p, q in zip(params, self.params, strict=True))

    def positions(self, param_index: int) -> range:
        """Where parameter `param_index`'s tensor(s) sit among the bound tensors."""
        return self._positions[param_index]

    def batch(self, shard: bool, whole_params: Callable[[list[Tensor]], list[int]] | None = None) -> GradBatch | None:
        """This step's gradients and norms; `whole_params(params)` names the positions whose full parameter
        norm the strategy needs (sharded parameters only), reduced in the same collective."""
        params, grads = self.params, [p.grad for p in self.params]
        names, tensors, index, counts = self.names, self.tensors, None, self.counts
        if any(g is None for g in grads):
            keep = tuple(i for i, g in enumerate(grads) if g is not None)
            if not keep:
                return None
            params, grads = [params[i] for i in keep], [grads[i] for i in keep]
            counts = tuple(self.counts[i] for i in keep)
            if keep != self._subset_key:
                kept = [position for i in keep for position in self.positions(i)]
                index_tensor = torch.tensor(kept, dtype=torch.long, device=grads[0].device)
                subset = (tuple(self.names[k] for k in kept), [self.tensors[k] for k in kept], index_tensor)
                self._subset_key, self._subset = keep, subset
            names, tensors, index = self._subset
        if self.sharded:  # parameter shards as they are now (FSDP2 may swap a parameter's local tensor)
            tensors = self.views(params, params, counts)
        grads = self.views(params, grads, counts)
        positions = whole_params(tensors) if self.sharded and whole_params is not None else []
        norms, total, param_norms = norm_ops.grad_norms(grads, group=self.group, shard=shard,
                                                        params=[tensors[i] for i in positions])
        full = dict(zip(positions, param_norms.unbind(0), strict=True)) if positions else {}
        return GradBatch(names, tensors, grads, norms, total, index, self.sharded, full)


def _named_parameters(source: nn.Module | Iterable) -> list[tuple[str, Tensor]]:
    if isinstance(source, nn.Module):
        named = list(source.named_parameters())
    else:
        named = [item if isinstance(item, tuple) else (f"param.{i}", item) for i, item in enumerate(source)]
    return [(name, p) for name, p in named if p.requires_grad]


def _new_binding(source: nn.Module | Iterable, named: list[tuple[str, Tensor]]) -> _Binding:
    """A binding of `named`; a module also declares its stacked experts and its output head."""
    names, params = tuple(name for name, _ in named), [p for _, p in named]
    if not isinstance(source, nn.Module):
        return _Binding(names, params)
    from adagc_repro.models.layout import output_head_names, stacked_experts

    return _Binding(names, params, stacked_experts(source), output_head_names(source))


# ---------------------------------------------------------------- the clipper


class Clipper:
    """Base class. Subclasses set `name`, validate their hyperparameters and implement `_decide`."""

    name = "clipper"
    shard = False  # norms of local shards instead of full (DTensor) tensors
    needs_loss = False
    compilable = True  # False where host-side Python state changes every step (it would recompile each time)
    scales_itself = False  # True where `_decide` scales the gradients (unit-wise), so no optimizer can do it

    def __init__(self, **hparams: Any):
        self.hparams = hparams
        self._binding: _Binding | None = None
        self._module_ref: weakref.ref | None = None
        self._state: dict[str, Tensor] | None = None
        self._pending: dict[str, Any] | None = None
        self._compiled: Callable[[GradBatch, Tensor | None], ClipStats] | None = None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({args})"

    # -- strategy hooks
    def _on_bind(self, names: tuple[str, ...]) -> None:
        """Precompute name-derived structures (groups, exclusions). Called whenever tensors are bound."""

    def _on_attach(self, binding: _Binding) -> None:
        """Register what must watch every backward pass (gradient hooks). Called by `attach`."""

    def _initial_state(self, n_tensors: int, device: torch.device) -> dict[str, Tensor]:
        return {}

    def _before_clip(self) -> None:
        """Host-side preparation of a step, run eagerly before the (possibly compiled) clip."""

    def _decide(self, batch: GradBatch, finite: Tensor, loss: Tensor | None) -> Decision:
        raise NotImplementedError

    def _whole_params(self, params: list[Tensor]) -> list[int]:
        """Positions of sharded parameters whose full norm `_decide` needs (`batch.param_norms`)."""
        return []

    @torch.no_grad()
    def attach(self, model: nn.Module) -> None:
        """Bind to `model` before its first backward (after any wrapping or compiling). Needed only by
        strategies that watch each micro-batch's backward (`aggc` with `norm_source=micro_batches`);
        harmless for the others."""
        self._on_attach(self._bind(model))

    # -- one step
    @torch.no_grad()
    def __call__(self, model_or_named_params: nn.Module | Iterable, *, loss: Tensor | float | None = None,
                 scale: bool = True) -> ClipStats:
        """Clip this step's gradients. `scale=False` decides and commits but leaves the gradients alone,
        for an optimizer that applies `stats.coefs` itself (`optim/folded_adamw.py`; see `can_defer`)."""
        if self.needs_loss and loss is None:
            raise ValueError(f"clipper '{self.name}' needs this step's loss: call clipper(model, loss=loss)")
        binding = self._bind(model_or_named_params)
        if not scale and not self._defers(binding):
            raise ValueError(f"clipper '{self.name}' cannot leave the scaling to the optimizer here "
                             "(unit-wise clipping, stacked experts or sharded gradients): call it with scale=True")
        batch = binding.batch(self.shard, self._whole_params)
        if batch is None:
            return ClipStats.nothing_to_clip()
        self._ensure_state(batch.device)
        self._before_clip()
        if loss is not None:
            loss = torch.as_tensor(loss).detach().to(batch.device, torch.float32).reshape(())
        if self._compiled is not None and not batch.sharded:
            return self._compiled(batch, loss, scale)
        return self._clip(batch, loss, scale)

    def can_defer(self, model_or_named_params: nn.Module | Iterable) -> bool:
        """Whether `self(model, scale=False)` is allowed: `stats.coefs` then holds one coefficient per
        parameter (named by `stats.names`), which is all an optimizer needs to apply the clipping."""
        return self._defers(self._bind(model_or_named_params))

    def _defers(self, binding: _Binding) -> bool:
        return not (self.scales_itself or binding.has_stacks or binding.sharded)

    def _clip(self, batch: GradBatch, loss: Tensor | None, scale: bool = True) -> ClipStats:
        """Decide, commit the state and scale the gradients: the part `compile()` turns into fused kernels."""
        finite = torch.isfinite(batch.total)
        if loss is not None:
            finite = finite & torch.isfinite(loss)
        decision = self._decide(batch, finite, loss)
        self._commit(finite, decision.state)
        return self._apply(batch, finite, decision, scale)

    def compile(self, backend: str = "inductor") -> Clipper:
        """Run decide + commit + scale as a compiled graph from now on (see `fused.py`); returns self.

        The eager path stays the reference (the tests compare both); sharded (DTensor) gradients and
        strategies with `compilable = False` keep using it.
        """
        from adagc_repro.clipping.fused import compile_step

        if self.compilable:
            self._compiled = compile_step(self._clip, backend)
        return self

    def _apply(self, batch: GradBatch, finite: Tensor, decision: Decision, scale: bool = True) -> ClipStats:
        n_tensors = batch.norms.numel()
        coefs = decision.coefs
        if coefs is None:
            per_tensor = torch.ones_like(batch.norms)
        else:
            coefs = torch.where(finite, coefs, torch.ones_like(coefs))
            if scale and not decision.applied:
                norm_ops.scale_(batch.grads, coefs)
            per_tensor = coefs.expand(n_tensors) if coefs.dim() == 0 else coefs
        post_norms = decision.post_norms if decision.post_norms is not None else per_tensor * batch.norms
        post_total = torch.where(finite, torch.linalg.vector_norm(post_norms), batch.total)
        no_spike = torch.zeros((), dtype=torch.bool, device=batch.device)
        spike = decision.spike if decision.spike is not None else no_spike
        return ClipStats(
            global_norm_pre=batch.total,
            global_norm_post=post_total,
            clipped_fraction=(per_tensor < 1).float().mean(),
            min_coef=per_tensor.min(),
            mean_coef=per_tensor.mean(),
            nonfinite=~finite,
            spike=finite & spike,
            names=batch.names,
            tensor_norms=batch.norms,
            coefs=per_tensor,
            ratios=decision.ratios,
            extras=decision.extras,
        )

    def _commit(self, finite: Tensor, new_state: dict[str, Tensor]) -> None:
        state = self._state
        updated = {**new_state, "step": state["step"] + 1}
        for key, value in updated.items():
            state[key] = torch.where(finite, value, state[key])

    @property
    def step(self) -> Tensor:
        """Number of finite steps taken (a 0-d device tensor)."""
        return self._state["step"] if self._state is not None else torch.tensor(0)

    # -- binding and state
    def _bind(self, source: nn.Module | Iterable) -> _Binding:
        if isinstance(source, nn.Module) and self._module_ref is not None and self._module_ref() is source:
            return self._binding
        named = _named_parameters(source)
        if self._binding is None or not self._binding.same_params([p for _, p in named]):
            binding = _new_binding(source, named)
            if self._binding is not None and binding.names != self._binding.names:
                raise ValueError(f"clipper '{self.name}' is bound to other parameters; build a new clipper")
            self._binding = binding
            self._on_bind(binding.names)
        self._module_ref = weakref.ref(source) if isinstance(source, nn.Module) else None
        return self._binding

    def _ensure_state(self, device: torch.device) -> None:
        if self._pending is not None:
            self._restore(self._pending, device)
            self._pending = None
        if self._state is None:
            n_tensors = len(self._binding.names)
            self._state = {"step": torch.zeros((), dtype=torch.long, device=device),
                           **self._initial_state(n_tensors, device)}
        elif self._state["step"].device != device:
            self._state = {k: v.to(device) for k, v in self._state.items()}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-exactly: state tensors, step counter, bound tensor names."""
        return {
            "name": self.name,
            "hparams": dict(self.hparams),
            "param_names": list(self._binding.names) if self._binding is not None else None,
            "state": {k: v.detach().clone() for k, v in (self._state or {}).items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("name") != self.name:
            raise ValueError(f"state of clipper '{state_dict.get('name')}' cannot load into '{self.name}'")
        if not state_dict["state"]:
            self._state, self._pending = None, None
            return
        self._pending = state_dict
        if self._state is not None:  # already running: restore now, on the state's device
            self._ensure_state(self._state["step"].device)

    def _restore(self, state_dict: dict[str, Any], device: torch.device) -> None:
        names = tuple(state_dict["param_names"])
        if self._binding is None:
            raise ValueError("bind the clipper to its parameters before restoring state")
        if names != self._binding.names:
            raise ValueError(f"clipper '{self.name}' state was saved for other parameters "
                             f"({len(names)} tensors, now {len(self._binding.names)})")
        self._state = {k: v.detach().to(device).clone() for k, v in state_dict["state"].items()}

    def telemetry(self, stats: ClipStats, top_k: int = 5) -> dict[str, Any]:
        """Top-k tensors by norm/threshold ratio and per-layer aggregates (JSON-serialisable)."""
        return clip_telemetry(stats, top_k=top_k)
