"""Nested mappings (YAML files, `--set KEY=VALUE` items) to typed dataclasses and back.

The mechanics under `ecmf.config`, which holds the settings themselves: conversion with a
ConfigError that names the key, merging of overrides, and parsing of `--set` items.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config value or key that cannot be used; the message names the key."""


def check(cond: bool, key: str, expected: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"config {key}: expected {expected}, got {value!r}")


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        check(isinstance(value, dict), key, "a mapping", value)
        return from_dict(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key)
    if origin is dict:
        check(isinstance(value, dict), key, "a mapping", value)
        _, vt = typing.get_args(tp)
        # A null entry removes a default one (`extract.encoders.audio: null`).
        return {str(k): _convert(vt, v, f"{key}.{k}") for k, v in value.items() if v is not None}
    if origin is list:
        if isinstance(value, str):  # `--set train.features=a,b`
            value = [v for v in value.split(",") if v]
        check(isinstance(value, (list, tuple)), key, "a list", value)
        (it,) = typing.get_args(tp)
        return [_convert(it, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        check(isinstance(value, bool), key, "true or false", value)
        return value
    if tp is int:
        check(isinstance(value, int) and not isinstance(value, bool), key, "an integer", value)
        return value
    if tp is float:
        check(isinstance(value, (int, float)) and not isinstance(value, bool), key, "a number",
               value)
        return float(value)
    if tp is str:
        check(isinstance(value, (str, int, float)) and not isinstance(value, bool), key,
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
        raise ConfigError(f"unknown key(s) {unknown} in {where}; known: {sorted(names)}")
    kwargs = {k: _convert(hints[k], v, f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


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
