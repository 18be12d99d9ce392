"""Frozen-dataclass configs: defaults in code, then a YAML file, then command-line overrides.

Every entry point has one frozen dataclass. :func:`add_config_arguments` turns its fields into
``--field-name`` options; :func:`resolve_config` layers code defaults, ``--config FILE.yaml`` and the
options actually given; unknown keys and ill-typed values raise a one-line :class:`ConfigError` naming
the file (or flag) and the field. :func:`save_config` writes the resolved config with every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ess.errors import ConfigError

C = TypeVar("C")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to the field type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, args[0], where)
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).replace("_", ""))
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def config_from_mapping(cls: type[C], data: dict[str, Any], source: str, base: C | None = None) -> C:
    """``base`` (or the code defaults) updated by ``data``; unknown keys are rejected."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(data).__name__}")
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = dataclasses.asdict(base) if base is not None else {}
    for key, value in data.items():
        k = str(key).replace("-", "_")
        if k not in names:
            raise ConfigError(f"{source}: unknown key {key!r} for {cls.__name__}")
        values[k] = _coerce(value, hints[k], f"{source}: {key}")
    try:
        return cls(**values)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    except TypeError as err:
        raise ConfigError(f"{source}: {err}") from None


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config ({err.__class__.__name__})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--field-name`` option per dataclass field (plus ``--config FILE``); defaults suppressed."""
    parser.add_argument("--config", metavar="FILE.yaml", default=None,
                        help="YAML file of config keys (applied over the code defaults)")
    hints = _field_types(cls)
    group = parser.add_argument_group(f"{cls.__name__} (override the YAML and the defaults)")
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f.metadata.get("help", "") + f" (default: {default!r})"
        if tp is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, metavar=f.name.upper(),
                               help=help_text)


def resolve_config(cls: type[C], args: argparse.Namespace, base: C | None = None) -> C:
    """Code defaults (or ``base``) <- ``--config`` YAML <- options given on the command line."""
    cfg = base if base is not None else config_from_mapping(cls, {}, "defaults")
    if getattr(args, "config", None):
        cfg = config_from_mapping(cls, load_yaml(args.config), str(args.config), base=cfg)
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in names}
    if given:
        hints = _field_types(cls)
        values = dataclasses.asdict(cfg)
        for k, v in given.items():
            values[k] = _coerce(v, hints[k], "--" + k.replace("_", "-"))
        try:
            cfg = cls(**values)
        except ConfigError as err:
            raise ConfigError(f"command line: {err}") from None
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    out = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    from ess.checkpoint import atomic_write_text

    return atomic_write_text(Path(path), yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def check(cond: bool, field: str, message: str) -> None:
    """Raise ``ConfigError('field: message')`` unless ``cond``: for ``__post_init__`` validation."""
    if not cond:
        raise ConfigError(f"{field}: {message}")
