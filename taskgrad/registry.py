"""Name -> class registries for the plug-in families (tasks, balancing strategies, aggregations).

A plug-in is one file: it registers itself with a decorator where it is defined, and the registry
imports every module of its package the first time it is asked for a name, so adding a plug-in
is adding a file. Out-of-tree plug-ins are named by import path, ``package.module:Class``, and
need no registration. Looking up an unknown name fails with the list of valid ones.

Plug-ins with options declare them as a dataclass ``Options`` (the schema and its help, as in
schema.py); ``parse_options`` builds and validates it with the config's one-line errors.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from taskgrad.schema import from_dict

T = TypeVar("T")


class Registry(Generic[T]):
    """A named family of plug-ins, e.g. ``TASKS = Registry("task", "taskgrad.tasks", Task)``.

    ``package``: where built-in plug-ins live (every module in it is imported on first lookup).
    ``base``: the class an out-of-tree ``module:Class`` must subclass.
    """

    def __init__(self, kind: str, package: str | None = None, base: type | None = None) -> None:
        self.kind = kind
        self.package = package
        self.base = base
        self._entries: dict[str, T] = {}
        self._discovered = package is None

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def _discover(self) -> None:
        """Import every module of the package once, so that each registers its plug-ins."""
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{self.package}."):
            if not info.name.rsplit(".", 1)[-1].startswith("_"):
                importlib.import_module(info.name)

    def get(self, name: str) -> T:
        if ":" in name:
            return self._load(name)
        self._discover()
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(sorted(self._entries))
            raise KeyError(
                f"unknown {self.kind} {name!r}; valid: {valid} (or package.module:Class)"
            ) from None

    def _load(self, path: str) -> T:
        """An out-of-tree plug-in, ``package.module:Class``."""
        module_name, _, attr = path.partition(":")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise KeyError(f"{self.kind} {path!r} cannot be loaded: {e}") from None
        if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise KeyError(f"{self.kind} {path!r} is not a subclass of {self.base.__name__}")
        return obj

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and ":" in name:
            try:
                self._load(name)
            except KeyError:
                return False
            return True
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


@dataclass
class NoOptions:
    """The options of a plug-in that takes none."""

    def check(self, where: str, **context: Any) -> None:
        """Checks that span fields; raise ConfigError naming the field (``where.field``)."""


def parse_options(cls: type, options: dict[str, Any] | None, where: str, **context: Any) -> Any:
    """``cls.Options`` built from ``options`` (unknown keys and bad types: one-line ConfigError
    naming ``where.field``), then its ``check(where, **context)`` if it has one."""
    schema = getattr(cls, "Options", NoOptions)
    parsed = from_dict(schema, dict(options or {}), where)
    check = getattr(parsed, "check", None)
    if check is not None:
        check(where, **context)
    return parsed
