"""Typed configuration: frozen dataclasses loaded from YAML, strict about keys and types.

Every job's config is a tree of frozen dataclasses. `load_config` reads a YAML file, applies
`--set a.b=value` overrides (the value is parsed as YAML, so `--set split.test_days=14` gives an
int and `--set features.half_lives_days=[1,7]` a list), and rejects unknown keys and values of the
wrong type with a message naming the dotted key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


def _alternatives(tp: Any) -> list[str]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return [n for a in args if a is not type(None) for n in _alternatives(a)] + (["null"] if type(None) in args else [])
    if origin is typing.Literal:
        return [repr(a) for a in args]
    if tp is bool:
        return ["true", "false"]
    return [getattr(tp, "__name__", None) or str(tp).replace("typing.", "")]


def _type_name(tp: Any) -> str:
    """A type as a user reads it: `true, false or 'auto'`, `str or null`."""
    names = _alternatives(tp)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


_FLOAT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        sections = [a for a in args if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and len(sections) == 1:  # a section with a mistake inside: say which
            raise ConfigError(errors[[a for a in args if a is not type(None)].index(sections[0])])
        raise ConfigError(f"{key}: {value!r} is not allowed; allowed: {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for section '{key}', got {value!r}")
        return from_dict(tp, value, key)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        k_tp, v_tp = args if args else (Any, Any)
        return {_coerce(k, k_tp, key): _coerce(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{key}: {value!r} is not allowed; allowed values: {allowed}")
        return value
    if tp is Any:
        return value
    if tp is str and isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()  # YAML reads 2011-11-09 as a date; string fields keep ISO text
    if tp is str and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # a column named 790 (RetailRocket's price property), written unquoted
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 5e-5 (no dot) as a string; it is the number a user meant
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" in section '{prefix}'" if prefix else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(repr(u) for u in unknown)}{where}; "
            f"allowed keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    required = [f for f, d in fields.items() if f not in kwargs and d.default is dataclasses.MISSING
                and d.default_factory is dataclasses.MISSING]
    if required:
        raise ConfigError(f"{prefix or cls.__name__}: required key(s) {', '.join(map(repr, required))} missing; "
                          f"keys: {', '.join(fields)}")
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one `a.b=value` override into (["a", "b"], parsed YAML value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected the form section.key=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"--set {text!r}: empty key")
    return path, yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of the nested dict `data` with each `a.b=value` override applied."""
    out = _deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return out


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build `cls` from an optional YAML file plus `--set` overrides.

    Missing keys take the dataclass defaults; unknown keys and wrong types raise ConfigError.
    """
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p}: expected a mapping at the top level")
        data = loaded
    data = apply_overrides(data, overrides or [])
    return from_dict(cls, data)


def to_dict(cfg: Any) -> dict:
    """The resolved config as plain YAML/JSON-able data (tuples become lists)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(cfg)
