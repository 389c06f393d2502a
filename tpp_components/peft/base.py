"""The contract every PEFT method implements."""

from __future__ import annotations

import dataclasses
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch.nn as nn

__all__ = ["PeftMethod", "PeftMethodConfig", "InjectionError", "match_modules", "is_under"]


class InjectionError(ValueError):
    """Raised when a PEFT method cannot be injected as configured (e.g. it matches no module)."""


@dataclasses.dataclass
class PeftMethodConfig:
    """Base configuration; each method subclasses it with its own documented fields.

    Attributes:
        target_modules: a regular expression matched (``re.fullmatch``) against module names,
            or a list of exact names / name suffixes, or a preset name such as ``"attention"``.
    """

    target_modules: str | list[str] = dataclasses.field(
        default="attention", metadata={"help": "regex, list of module names, or a preset name"}
    )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form of the configuration."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PeftMethodConfig:
        """Build the configuration, naming any unknown key."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown option(s) {unknown}; expected a subset of {sorted(names)}.")
        return cls(**values)


def match_modules(
    network: nn.Module, target_modules: str | list[str], types: tuple[type, ...], exclude: tuple[str, ...] = ()
) -> list[str]:
    """Names of the modules of ``network`` selected by ``target_modules`` and of one of ``types``.

    A string is a regular expression matched with ``re.fullmatch``; a list holds exact module
    names or dotted suffixes (``"attn.qkv"`` matches ``blocks.0.attn.qkv``). Modules inside
    ``exclude`` (name prefixes, e.g. a task head) are never selected.
    """
    from tpp_components.peft.presets import resolve_target_modules

    pattern = resolve_target_modules(target_modules)
    names = []
    for name, module in network.named_modules():
        if not name or not isinstance(module, types) or is_under(name, exclude):
            continue
        if isinstance(pattern, str):
            hit = re.fullmatch(pattern, name) is not None
        else:
            hit = any(name == p or name.endswith("." + p) for p in pattern)
        if hit:
            names.append(name)
    return names


def is_under(name: str, prefixes: Sequence[str]) -> bool:
    """Whether module or parameter ``name`` is one of ``prefixes`` or lies inside one of them."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class PeftMethod(ABC):
    """A parameter-efficient fine-tuning method that injects target parameters into a network.

    Subclasses set ``name``, ``config_class`` and ``mergeable``, and register themselves with
    :func:`tpp_components.peft.registry.register_method`. Injection happens in place and must
    raise :class:`InjectionError` when it matches nothing.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[PeftMethodConfig]]
    mergeable: ClassVar[bool] = False

    def __init__(self, config: PeftMethodConfig) -> None:
        if not isinstance(config, self.config_class):
            raise TypeError(f"{self.name}: expected a {self.config_class.__name__}, got {type(config).__name__}.")
        self.config = config

    #: module types the method can attach to
    module_types: ClassVar[tuple[type, ...]] = (nn.Module,)

    def inject(self, network: nn.Module, exclude: tuple[str, ...] = ()) -> None:
        """Add the method's target parameters to ``network`` in place.

        Args:
            network: the backbone network (its weights already loaded).
            exclude: name prefixes of modules never to touch, e.g. the task head.

        Raises:
            InjectionError: the configured ``target_modules`` match no module of a supported type.
        """
        names = match_modules(network, self.config.target_modules, self.module_types, tuple(exclude))
        if not names:
            kinds = ", ".join(t.__name__ for t in self.module_types)
            raise InjectionError(
                f"PEFT method '{self.name}': target_modules={self.config.target_modules!r} matches no module of "
                f"type ({kinds}) in {type(network).__name__}; nothing would be trained."
            )
        self.injected_modules = names
        self._inject(network, names)
        self.target_names = sorted(self._target_names(network, names))
        if not self.target_names:
            raise InjectionError(f"PEFT method '{self.name}' added no trainable parameter to {names}.")

    @abstractmethod
    def _inject(self, network: nn.Module, module_names: list[str]) -> None:
        """Modify the modules called ``module_names`` in place."""

    @abstractmethod
    def _target_names(self, network: nn.Module, module_names: list[str]) -> list[str]:
        """Names (relative to ``network``) of the parameters the injection made trainable."""

    def merge(self, network: nn.Module) -> nn.Module:
        """Fold the target parameters into the base weights in place; return the plain network."""
        raise NotImplementedError(f"PEFT method '{self.name}' cannot be merged into the base network.")

    def canonical_name(self, name: str) -> str:
        """The name a frozen parameter had before injection (methods that wrap layers override)."""
        return name
