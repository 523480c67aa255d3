"""Registries by name: configs say `name: adagc`, code looks the builder up here.

Each family (clippers, optimizers, models, schedules, data sets) owns one `Registry` in its package;
builders register with a decorator. `build` checks hyperparameters against the builder's signature so
that a typo in a config fails with one line naming the key and the allowed names.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from adagc_repro.errors import ConfigError


class Registry:
    def __init__(self, kind: str, config_key: str, selector: str = "name"):
        self.kind = kind  # e.g. "clipper", for messages
        self.config_key = config_key  # e.g. "clip", the config group that selects it
        self.selector = selector  # the key in that group holding the registered name
        self._builders: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._builders:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._builders[name] = builder
            return builder

        return decorator

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: str) -> bool:
        return name in self._builders

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._builders:
            raise ConfigError(f"{self.config_key}.{self.selector}", f"unknown {self.kind} '{name}'", self.names())
        return self._builders[name]

    def hyperparameters(self, name: str) -> list[str]:
        """Names of the keyword hyperparameters the builder accepts."""
        params = inspect.signature(self.get(name)).parameters.values()
        return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def check(self, name: str, hparams: Mapping[str, Any], positional: tuple[str, ...] = ()) -> None:
        """Raise ConfigError if `hparams` holds a key the builder does not take."""
        builder = self.get(name)
        params = inspect.signature(builder).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return
        allowed = [h for h in self.hyperparameters(name) if h not in positional]
        hints = _type_hints(builder)
        for key, value in hparams.items():
            if key not in allowed:
                raise ConfigError(
                    f"{self.config_key}.{key}", f"unknown hyperparameter for {self.kind} '{name}'", allowed
                )
            if key in hints and not _conforms(value, hints[key]):
                raise ConfigError(f"{self.config_key}.{key}", f"expected {_describe(hints[key])}, got {value!r}")

    def build(self, registered_name: str, /, *args: Any, **hparams: Any) -> Any:
        positional = tuple(self.hyperparameters(registered_name)[: len(args)])
        self.check(registered_name, hparams, positional)
        return self.get(registered_name)(*args, **hparams)


def _type_hints(builder: Callable[..., Any]) -> dict[str, Any]:
    """The builder's parameter annotations that can be resolved (others are not type-checked)."""
    hints = {}
    module_globals = getattr(inspect.unwrap(builder), "__globals__", {})
    for name, param in inspect.signature(builder).parameters.items():
        annotation = param.annotation
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, module_globals, vars(typing))  # noqa: S307 - the builder's own annotation
            except Exception:
                continue
        if annotation is not inspect.Parameter.empty:
            hints[name] = annotation
    return hints


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a config value fits a builder's annotation (only the plain types configs carry)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint in (int, bool, str):
        return isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
    if (origin or hint) in (list, tuple, collections.abc.Sequence):
        if isinstance(value, (str, bytes)) or not isinstance(value, collections.abc.Sequence):
            return False  # lists and tuples, and OmegaConf's ListConfig
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(_conforms, value, args))
        return not args or all(_conforms(item, args[0]) for item in value)
    if (origin or hint) in (dict, collections.abc.Mapping):
        return isinstance(value, Mapping)
    return True


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
