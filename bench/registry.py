"""A small, checked registry: names → objects or lazy ``"module:attr"`` strings.

Modelled on lm-evaluation-harness' ``Registry(name, base_cls=…)`` and timm's ``register_model``:
collisions raise naming both origins, unknown names suggest the closest match, lazy entries
import on first ``get``, and a registry with a ``base_cls`` refuses what does not subclass it
(and, for methods, what declares malformed tags), at ``add`` or, for lazy entries, at ``get``.
"""

from __future__ import annotations

import importlib
import inspect
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from bench.errors import BenchError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → value. Values may be given lazily as ``"package.module:attr"``."""

    def __init__(self, kind: str, *, base_cls: type | None = None, check: Callable[[type], object] | None = None):
        self.kind = kind
        self.base_cls = base_cls
        #: further validation of a class (e.g. ``bench.api.tags_of``); raises BenchError
        self.check = check
        self._items: dict[str, T | str] = {}
        self._origin: dict[str, str] = {}
        self._lock = threading.Lock()
        self._frozen = False
        #: the plugin whose registration hook is running (set by the plugin manager), for origins
        self.registering: str | None = None

    def add(self, name: str, value: T | str, *, origin: str | None = None) -> T | str:
        """Register ``value`` under ``name``; a second registration of a name raises."""
        if not isinstance(name, str) or not name:
            raise BenchError(f"{self.kind} names must be non-empty strings, got {name!r}")
        if origin is None:
            origin = f"plugin {self.registering} ({_caller()})" if self.registering else _caller()
        with self._lock:
            if self._frozen:
                raise BenchError(f"the {self.kind} registry is frozen; register from a plugin hook")
            if name in self._items:
                raise BenchError(
                    f"{self.kind} {name!r} is registered twice "
                    f"(first by {self._origin[name]}, again by {origin})"
                )
            if not isinstance(value, str):
                self._check(name, value)
            self._items[name] = value
            self._origin[name] = origin
        return value

    def _check(self, name: str, value: object) -> None:
        if self.base_cls is None:
            return
        if not (isinstance(value, type) and issubclass(value, self.base_cls)):
            raise BenchError(f"{self.kind} {name!r}: {value!r} is not a subclass of "
                             f"{self.base_cls.__module__}.{self.base_cls.__qualname__}")
        if self.check is not None:
            self.check(value)   # e.g. malformed capability tags fail here, not mid-grid

    def discard(self, name: str) -> None:
        """Remove ``name`` (a plugin skipped after a failed registration takes its names back)."""
        with self._lock:
            self._items.pop(name, None)
            self._origin.pop(name, None)

    def get(self, name: str) -> T:
        try:
            value = self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._items) from None
        if isinstance(value, str) and ":" in value:
            module, _, attr = value.partition(":")
            value = getattr(importlib.import_module(module), attr)
            self._check(name, value)
            self._items[name] = value
        return value  # type: ignore[return-value]

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
