"""Loading a configuration: YAML files that hold values, `key=value` overrides, conversion of each value to its
field's type (one-line ConfigError naming the key), and the config back as plain dicts / YAML.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from threedrs.config.sections import ConfigError, ExperimentConfig


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Load a YAML file (or the defaults when `path` is None), apply `key=value` overrides and validate.

    Raises ConfigError with the offending key for unknown keys, wrong types and failed checks.
    """
    cfg = from_dict(ExperimentConfig, _given_values(path, overrides))
    validate(cfg)
    return cfg


def explicit_keys(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> set[str]:
    """The dotted keys (``probe.posenc``) that a YAML file and ``key=value`` overrides set; a section given as a
    mapping names each of its leaves. Bad files and overrides raise ConfigError as in `load_config`."""

    def leaves(node: dict[str, Any], prefix: str) -> set[str]:
        out = set()
        for key, value in node.items():
            out |= leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
        return out

    return leaves(_given_values(path, overrides), "")


def _given_values(path: str | Path | None, overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The nested values a YAML file (None: none) and ``key=value`` overrides give, before conversion;
    ConfigError naming the file or the override when one cannot be read."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({exc})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections, got {type(loaded).__name__}")
        values = loaded
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(values, key, value)
    return values


def parse_override(item: str) -> tuple[str, Any]:
    """Split `a.b=value` into ("a.b", parsed value); the value is read as YAML (so 3, 1e-5, true, [1,2] work)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=1e-5)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def from_dict(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a (nested) dict, converting each value to the field's annotated type."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"unknown config key {prefix}{key}{hint}; known: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        if name not in values:
            continue
        kwargs[name] = _convert(values[name], hints[name], f"{prefix}{name}")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts and lists (for YAML dumps and manifests)."""
    out = dataclasses.asdict(cfg)
    return _plain(out)


def dump_yaml(cfg: Any) -> str:
    """The config as YAML text, every field written out."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def validate(cfg: Any) -> None:
    """Run `validate()` on every dataclass in the tree (depth first)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate(value)
    check = getattr(cfg, "validate", None)
    if callable(check):
        check()


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = values
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to annotated type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError("; or ".join(errors) if errors else f"{key}: bad value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(repr(a) for a in args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        seq = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(seq) if origin is tuple else seq
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported config type {tp!r}")
