"""Typed dataclass trees from plain dicts: the validation behind the config and plug-in options.

``from_dict(cls, data, where)`` builds dataclass ``cls`` from a nested dict, checking each value
against its annotation (``Literal``, unions, lists, tuples, nested dataclasses); unknown keys and
bad values raise ``ConfigError`` with one line that names the field by its dotted path.
``need(ok, where, rule)`` is the same one-line error for checks that span fields.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from typing import Any, Literal


class ConfigError(ValueError):
    """A bad config value; the message is one line that names the field."""


def need(ok: bool, where: str, rule: str) -> None:
    """Raise ``ConfigError("<where>: need <rule>")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{where}: need {rule}")


def _check(tp: Any, value: Any, where: str) -> Any:
    """Validate ``value`` against the annotation ``tp``; return it converted (int -> float...)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        valid = typing.get_args(tp)
        if value not in valid:
            raise ConfigError(
                f"{where}: invalid value {value!r}; valid: {', '.join(map(str, valid))}"
            )
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_check(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        items = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(items):
            raise ConfigError(f"{where}: expected {len(items)} values, got {value!r}")
        return tuple(
            _check(t, v, f"{where}[{i}]") for i, (t, v) in enumerate(zip(items, value, strict=True))
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{where}: unsupported type {tp!r}")  # pragma: no cover - schema bug


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys by name.

    ``where`` is the dotted path of ``data`` in the tree, used in error messages.
    """
    if isinstance(data, str) and hasattr(cls, "from_name"):
        data = cls.from_name(data)
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    prefix = f"{where}." if where else ""
    for key in data:
        if key not in fields:
            raise ConfigError(f"config: unknown key '{prefix}{key}'; valid: {', '.join(fields)}")
    kwargs = {k: _check(hints[k], v, f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{where or 'config'}: {e}") from None


def to_dict(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, list | tuple):
        return [to_dict(v) for v in cfg]
    return cfg
