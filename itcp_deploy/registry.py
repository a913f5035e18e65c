"""Registries by name (timm's ``register_model``/``create_model`` shape).

Used for models, backends, importance criteria, group scores and search methods. An unknown name gets one
line listing the valid names and the closest match; registering a name twice is an error.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from itcp_deploy.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named mapping from names to factories (or objects).

    Example:
        >>> backends: Registry[type] = Registry("backend")
        >>> @backends.register("onnxruntime")
        ... class OrtRunner: ...
        >>> backends.get("onnxruntime") is OrtRunner
        True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise unknown_name(self.kind, name, self.names()) from None

    def unknown_message(self, name: str) -> str:
        return unknown_name(self.kind, name, self.names()).problem

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def unknown_name(kind: str, name: str, valid: list[str], fix: str | None = None,
                 prefix: str = "") -> UnknownNameError:
    """The one-line error for an unknown name: the closest valid name (shown with ``prefix``, e.g. ``timm:``),
    then ``fix``, by default all the valid names."""
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
    return UnknownNameError(f"unknown {kind} {name!r}{hint}", fix or f"use one of: {', '.join(valid)}")


def drop_none(kwargs: dict) -> dict:
    """Drop ``None`` values so unset CLI options never override library defaults."""
    return {k: v for k, v in kwargs.items() if v is not None}
