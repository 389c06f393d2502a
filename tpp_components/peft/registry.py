"""One registry of PEFT methods: adding a method means registering it, never editing a dispatcher."""

from __future__ import annotations

from typing import Any

from tpp_components.peft.base import PeftMethod

__all__ = ["register_method", "get_method_class", "available_methods", "create_method"]

_METHODS: dict[str, type[PeftMethod]] = {}


def register_method(cls: type[PeftMethod]) -> type[PeftMethod]:
    """Class decorator adding a :class:`PeftMethod` under its ``name``."""
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise ValueError(f"PEFT method '{cls.name}' is already registered by {_METHODS[cls.name].__qualname__}.")
    _METHODS[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    """Names of the registered methods."""
    return sorted(_METHODS)


def get_method_class(name: str) -> type[PeftMethod]:
    """The class registered as ``name``; the error lists the valid names."""
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown PEFT method '{name}'; expected one of {available_methods()}.") from None


def create_method(name: str, **options: Any) -> PeftMethod:
    """Instantiate method ``name`` with its configuration built from ``options``."""
    cls = get_method_class(name)
    return cls(cls.config_class.from_dict(options))
