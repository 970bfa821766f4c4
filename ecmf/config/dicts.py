"""Nested mappings (YAML files, `--set KEY=VALUE` items) to typed dataclasses and back.

The mechanics under `ecmf.config`, which holds the settings themselves: conversion with a
ConfigError that names the key, merging of overrides, and parsing of `--set` items.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

import yaml

from ecmf.errors import UserError


class ConfigError(UserError, ValueError):
    """A config value or key that cannot be used; the message names the key's full path.

    Raised with `key`, `expected` and `value`, a dataclass's check names its key relative to its
    section ("batch_size"); `from_dict` prefixes the path it is building ("extract.encoders.
    frames") once, so the message reads `config extract.encoders.frames.batch_size: ...`.
    """

    def __init__(self, message: str = "", key: str = "", expected: str = "", value: Any = None):
        self.key, self.expected, self.value = key, expected, value
        self.qualified = not key  # a free-form message is shown as it is
        super().__init__(message)

    def qualify(self, prefix: str) -> ConfigError:
        if not self.qualified and prefix:
            self.key = f"{prefix}.{self.key}"
        self.qualified = True
        return self

    def __str__(self) -> str:
        if self.key:
            return f"config {self.key}: expected {self.expected}, got {self.value!r}"
        return super().__str__()


def check(cond: bool, key: str, expected: str, value: Any) -> None:
    """Raise a ConfigError for `key` (relative to the dataclass checking it) unless `cond`."""
    if not cond:
        raise ConfigError(key=key, expected=expected, value=value)


def section(path: str):
    """Class decorator of a top-level config section: its checks name their keys under `path`
    (`train.folds`) even when it is built directly, not through `from_dict`."""

    def wrap(cls):
        own = cls.__post_init__

        def __post_init__(self):
            try:
                own(self)
            except ConfigError as e:
                raise e.qualify(path) from None

        cls.__post_init__ = __post_init__
        return cls

    return wrap


def _check_at(cond: bool, key: str, expected: str, value: Any) -> None:
    """`check` for a key whose full path is already known."""
    if not cond:
        raise ConfigError(key=key, expected=expected, value=value).qualify("")


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        _check_at(isinstance(value, dict), key, "a mapping", value)
        # A base class may pick its subclass from the mapping (an encoder by its name).
        pick = getattr(tp, "config_class", None)
        return from_dict(pick(value) if pick else tp, value, key)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key)
    if origin is dict:
        _check_at(isinstance(value, dict), key, "a mapping", value)
        _, vt = typing.get_args(tp)
        # A null entry removes a default one (`extract.encoders.audio: null`).
        return {str(k): _convert(vt, v, f"{key}.{k}") for k, v in value.items() if v is not None}
    if origin is list:
        if isinstance(value, str):  # `--set train.features=a,b`
            value = [v for v in value.split(",") if v]
        _check_at(isinstance(value, (list, tuple)), key, "a list", value)
        (it,) = typing.get_args(tp)
        return [_convert(it, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        _check_at(isinstance(value, bool), key, "true or false", value)
        return value
    if tp is int:
        _check_at(isinstance(value, int) and not isinstance(value, bool), key, "an integer", value)
        return value
    if tp is float:
        _check_at(isinstance(value, (int, float)) and not isinstance(value, bool), key,
                  "a number", value)
        return float(value)
    if tp is str:
        _check_at(isinstance(value, (str, int, float)) and not isinstance(value, bool), key,
                  "a string", value)
        return str(value)
    return value


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a (partial) mapping; unknown keys fail with the known ones."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = prefix or "config"
        hints_ = [f"{u!r}: did you mean {m[0]!r}?" for u in unknown
                  if (m := difflib.get_close_matches(u, names, n=1))]
        extra = f" ({'; '.join(hints_)})" if hints_ else ""
        raise ConfigError(f"unknown key(s) {unknown} in {where}{extra}; known: {sorted(names)}")
    kwargs = {k: _convert(hints[k], v, f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise e.qualify(prefix) from None


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_set(item: str) -> dict:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=20")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out
