"""A name -> function registry, the mechanism behind pluggable algorithms.

Advantage estimators and policy losses are plain functions registered under a name with a
decorator; configs refer to them by that name. Looking up an unknown name raises
:class:`~mx_envs.errors.UnknownName` (a ``ConfigError`` and a ``KeyError``) whose message suggests the
closest registered names and lists them all, so a typo in a config is obvious. User code (a plugin,
see ``mx train --plugin``) registers its own functions the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from mx_envs.errors import unknown_name

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """Functions of one kind (``kind`` names it in error messages), keyed by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: ``@REGISTRY.register("name")`` adds the function; a duplicate name is an error."""

        def decorator(fn: F) -> F:
            if name in self._entries and self._entries[name] is not fn:
                raise ValueError(f"{self.kind} {name!r} is already registered ({self._entries[name]!r})")
            self._entries[name] = fn
            return fn

        return decorator

    def get(self, name: str, *, key: str | None = None) -> F:
        """The function registered as ``name``; ``key`` (a config path) locates the error message."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise unknown_name(self.kind, name, self._entries, key=key) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
