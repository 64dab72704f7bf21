"""A small, checked registry: names → objects or lazy ``"module:attr"`` strings.

Modelled on lm-evaluation-harness' registry and timm's ``register_model``: collisions
raise, unknown names suggest the closest match, lazy entries import on first ``get``.
"""

from __future__ import annotations

import importlib
import inspect
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

from bench.errors import BenchError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → value. Values may be given lazily as ``"package.module:attr"``."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T | str] = {}
        self._origin: dict[str, str] = {}
        self._lock = threading.Lock()
        self._frozen = False

    def add(self, name: str, value: T | str, *, origin: str | None = None) -> T | str:
        """Register ``value`` under ``name``; a second registration of a name raises."""
        if not isinstance(name, str) or not name:
            raise BenchError(f"{self.kind} names must be non-empty strings, got {name!r}")
        with self._lock:
            if self._frozen:
                raise BenchError(f"the {self.kind} registry is frozen; register from a plugin hook")
            if name in self._items:
                raise BenchError(
                    f"{self.kind} {name!r} is registered twice "
                    f"(first by {self._origin[name]}, again by {origin or _caller()})"
                )
            self._items[name] = value
            self._origin[name] = origin or _caller()
        return value

    def get(self, name: str) -> T:
        try:
            value = self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._items) from None
        if isinstance(value, str) and ":" in value:
            module, _, attr = value.partition(":")
            value = getattr(importlib.import_module(module), attr)
            self._items[name] = value
        return value  # type: ignore[return-value]

    def origin(self, name: str) -> str:
        self.get(name)
        return self._origin[name]

    def freeze(self) -> None:
        self._frozen = True

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def _caller() -> str:
    for frame in inspect.stack()[2:]:
        if not frame.filename.endswith("registry.py"):
            return f"{frame.filename}:{frame.lineno}"
    return "?"
