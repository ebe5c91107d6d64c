"""A name → factory registry: how operators extend the selector (clients only name things).

Architectures, decoders and scores each keep one ``Registry``; an operator's
module registers into them at import time (``dynams serve --models MODULE``), and the
selector's scorer processes import the same modules, so a name means the same everywhere.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Registry", "UnknownName", "load_plugin_modules", "plugin_modules"]

T = TypeVar("T", bound=Callable)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_LOADED: list[str] = []


class UnknownName(KeyError):
    """A name that no one registered; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class Registry(Generic[T]):
    """Factories by name for one kind of plug-in (``kind`` appears in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, T] = {}

    def register(self, name: str, factory: T, *, replace: bool = False) -> None:
        """Make ``name`` resolve to ``factory``; a second registration needs ``replace``."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{self.kind} name must be 1-128 letters, digits or -_. , "
                             f"got {name!r}")
        if name in self._factories and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._factories[name] = factory

    def get(self, name: str) -> T:
        """The factory registered as ``name``; ``UnknownName`` lists the known names."""
        try:
            return self._factories[name]
        except KeyError:
            raise UnknownName(f"unknown {self.kind} {name!r}; registered: "
                              f"{self.names()}") from None

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories


def load_plugin_modules(modules: Sequence[str]) -> None:
    """Import operator-named modules whose import registers architectures, decoders, …"""
    for module in modules:
        importlib.import_module(module)
        if module not in _LOADED:
            _LOADED.append(module)


def plugin_modules() -> list[str]:
    """The modules loaded so far, in order (scorer processes import the same ones)."""
    return list(_LOADED)
