"""Frozen-dataclass configs: defaults in code, then a YAML file, then command-line overrides.

Every entry point has one frozen dataclass. :func:`add_config_arguments` turns its fields into
``--field-name`` options; :func:`resolve_config` layers code defaults, ``--config FILE.yaml`` and the
options actually given; unknown keys and ill-typed values raise a one-line :class:`ConfigError` naming
the file (or flag) and the field. :func:`save_config` writes the resolved config with every run.

A field whose type is itself a config dataclass (``JobConfig.search: SearchConfig``) is *nested*: a
layer gives it a mapping (YAML) or ``"key=value key=value"`` (a flag, ``--search "lr=10 epochs=3"``)
that is merged into its current value, field by field, and validated by the nested class. The key
``preset`` first replaces the current value by one of the class's named presets (the ``PRESETS``
table of the module that defines the class): ``search: {preset: cpu-small, lr: 10}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import os
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ess.checkpoint import atomic_write_text
from ess.errors import ConfigError, GenotypeError, decode_utf8
from ess.space.refs import load_genotype

C = TypeVar("C")

INT_LIMIT = 2**63  # config integers are sizes, counts and seeds: every one must fit an int64 (torch, numpy)
_REPR_LIMIT = 60


def _short(value: Any) -> str:
    """``repr(value)`` cut to one short line, so that an error message stays one line whatever the input."""
    try:
        text = repr(value)
    except Exception:  # a repr that fails (or recurses too deep) must not hide the real error
        text = f"<{type(value).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= _REPR_LIMIT else text[:_REPR_LIMIT - 3] + "..."


def _one_line(text: object, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
            raise ConfigError(f"{where}: expected a list, got {_short(value)}")
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {_short(value)}")
    if tp is int:
        return _coerce_int(value, where)
    if tp is float:
        return _coerce_float(value, where)
    if tp is str:
        if isinstance(value, (dict, list, tuple, set, frozenset, bytes, bytearray)):
            raise ConfigError(f"{where}: expected a string, got {_short(value)}")
        return str(value)
    return value


def _coerce_int(value: Any, where: str) -> int:
    """An int from an int (numpy's too: Tune samples them), a whole float or a decimal string."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {_short(value)}")
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and math.isfinite(value) \
            and float(value).is_integer():
        value = int(value)
    if isinstance(value, numbers.Integral):
        out = int(value)
    elif isinstance(value, str) and len(value) <= 40:  # a longer literal is out of range anyway
        try:
            out = int(value.strip().replace("_", ""))
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {_short(value)}") from None
    else:
        raise ConfigError(f"{where}: expected an integer, got {_short(value)}")
    if not -INT_LIMIT <= out < INT_LIMIT:
        raise ConfigError(f"{where}: integer {_short(out)} out of range (|value| < 2**63)")
    return out


def _coerce_float(value: Any, where: str) -> float:
    """A finite float from a number (numpy's too) or a numeric string; inf and NaN are refused."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise ConfigError(f"{where}: expected a number, got {_short(value)}")
    try:
        out = float(value.strip().replace("_", "") if isinstance(value, str) and len(value) <= 400 else value)
    except (ValueError, OverflowError):
        raise ConfigError(f"{where}: expected a number, got {_short(value)}") from None
    if not math.isfinite(out):
        raise ConfigError(f"{where}: expected a finite number, got {_short(value)}")
    return out


def is_config_class(tp: Any) -> bool:
    """True for a config dataclass (a nested field's type)."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def presets_of(cls: type) -> Mapping[str, Mapping[str, Any]]:
    """The named presets of a config class: the ``PRESETS`` table of the module that defines it."""
    table = getattr(sys.modules.get(cls.__module__), "PRESETS", None)
    return table if isinstance(table, Mapping) else {}


def parse_overrides(value: Any, where: str) -> dict[str, Any]:
    """A mapping from YAML, or ``"key=value key=value"`` (commas work too) from the command line."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k).replace("-", "_"): v for k, v in value.items()}
    if isinstance(value, str):
        out: dict[str, Any] = {}
        items = []
        for chunk in value.split():  # commas separate items too, unless inside [...] or {...}
            items += [chunk] if any(c in chunk for c in "[{") else [c for c in chunk.split(",") if c]
        for item in items:
            if "=" not in item:
                raise ConfigError(f"{where}: expected key=value items, got {_short(item)}")
            key, raw = item.split("=", 1)
            try:
                out[key.strip().replace("-", "_")] = yaml.safe_load(raw) if raw != "" else ""
            except (yaml.YAMLError, ValueError, RecursionError):  # ValueError: a 5000-digit integer
                out[key.strip().replace("-", "_")] = raw
        return out
    raise ConfigError(f"{where}: expected a mapping or key=value items, got {_short(value)}")


def _nested(cls: type[C], value: Any, where: str, current: C) -> C:
    """A nested config: ``current`` updated by a mapping or ``key=value`` items (``preset`` first)."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, (str, Mapping)):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} keys, got {_short(value)}")
    data = parse_overrides(value, where)
    if "preset" in data:
        name, table = data.pop("preset"), presets_of(cls)
        if not isinstance(name, str) or name not in table:
            raise ConfigError(f"{where}: preset: unknown preset {_short(name)} for {cls.__name__} "
                              f"(known: {', '.join(table) or 'none'})")
        current = config_from_mapping(cls, dict(table[name]), f"{where}: preset {name}")
    return config_from_mapping(cls, data, where, base=current)


def _field_values(cls: type, base: Any) -> dict[str, Any]:
    """The field values of ``base`` (nested configs kept as objects); without a base, nested defaults only."""
    if base is not None:
        return {f.name: getattr(base, f.name) for f in dataclasses.fields(cls)}
    return {f.name: f.default_factory() for f in dataclasses.fields(cls)
            if is_config_class(_field_types(cls)[f.name]) and f.default_factory is not dataclasses.MISSING}


def config_from_mapping(cls: type[C], data: dict[str, Any], source: str, base: C | None = None) -> C:
    """``base`` (or the code defaults) updated by ``data``; unknown keys are rejected, nested configs merged."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(data).__name__}")
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = _field_values(cls, base)
    for key, value in data.items():
        k = str(key).replace("-", "_") if isinstance(key, str) else None
        if k not in names:
            raise ConfigError(f"{source}: unknown key {_short(key)} for {cls.__name__}")
        if is_config_class(hints[k]):
            current = values.get(k)
            if current is None:   # a nested field without a default: its class's defaults
                current = config_from_mapping(hints[k], {}, f"{source}: {key}")
            values[k] = _nested(hints[k], value, f"{source}: {key}", current)
        else:
            values[k] = _coerce(value, hints[k], f"{source}: {key}")
    try:
        return cls(**values)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    except TypeError as err:
        raise ConfigError(f"{source}: {_one_line(err)}") from None


class SafeUniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data only: no ``!!python/...`` tags, no code run), refusing duplicate keys.

    A repeated key is a silent override in plain YAML (``lr: 1`` then ``lr: 20``); here it is an error.
    Keys merged in by ``<<: *anchor`` may still be overridden.
    """

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # unhashable: the base class reports it
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark, f"found duplicate key {_short(key)}",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_NO_CONSTRUCTOR = "could not determine a constructor for the tag"


def parse_yaml(text: str, source: str) -> Any:
    """``text`` read with :class:`SafeUniqueKeyLoader`; every failure is a one-line :class:`ConfigError`."""
    try:
        return yaml.load(text, Loader=SafeUniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = str(getattr(err, "problem", None) or "")
        if problem.startswith(_NO_CONSTRUCTOR):  # !!python/object and friends: the safe loader's refusal
            tag = problem[len(_NO_CONSTRUCTOR):].strip(" '").replace("tag:yaml.org,2002:", "!!")
            raise ConfigError(f"{source}: YAML tag {_short(tag)}{at} is not allowed: a config holds plain data "
                              "(mappings, lists, strings, numbers, booleans)") from None
        why = f" ({_one_line(problem)})" if problem else ""
        raise ConfigError(f"{source}: not valid YAML{at}{why}") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML (nested too deeply)") from None
    except (ValueError, OverflowError) as err:  # e.g. an integer literal of more than 4300 digits
        raise ConfigError(f"{source}: not valid YAML ({_one_line(err, 100)})") from None


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in a YAML config file (empty file: ``{}``); a one-line :class:`ConfigError` otherwise."""
    path = Path(path)
    if not os.path.exists(path):  # os.path: a name the OS refuses (too long, NUL byte) reads as missing
        raise ConfigError(f"{path}: no such config file")
    try:
        data = path.read_bytes()
    except (OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or err
        raise ConfigError(f"{path}: cannot read config ({_one_line(reason)})") from None
    data = parse_yaml(decode_utf8(data, str(path), ConfigError), str(path))
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
        about = f.metadata.get("help", "").replace("%", "%%")   # argparse formats help with %: a literal % is %%
        help_text = about + f" (default: {default!r})".replace("%", "%%")
        if is_config_class(tp):
            group.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, metavar="'KEY=VALUE ...'",
                               help=about + f" ({tp.__name__} fields; preset=NAME first starts from a named preset)")
        elif tp is bool:
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
        values = _field_values(cls, cfg)
        for k, v in given.items():
            where = "--" + k.replace("_", "-")
            values[k] = _nested(hints[k], v, where, values[k]) if is_config_class(hints[k]) else \
                _coerce(v, hints[k], where)
        try:
            cfg = cls(**values)
        except ConfigError as err:
            raise ConfigError(f"command line: {err}") from None
        except TypeError as err:
            raise ConfigError(f"command line: {_one_line(err)}") from None
    return cfg


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain data (nested configs as mappings, tuples as lists): YAML, JSON, MLflow params."""
    return _plain(cfg)


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    return atomic_write_text(Path(path), yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def check(cond: bool, field: str, message: str) -> None:
    """Raise ``ConfigError('field: message')`` unless ``cond``: for ``__post_init__`` validation."""
    if not cond:
        raise ConfigError(f"{field}: {_one_line(message, 300)}")


def check_genotype(name_or_path: str, field: str) -> None:
    """Raise ``ConfigError('field: ...')`` unless ``name_or_path`` is a built-in genotype or a valid genotype
    file: for ``__post_init__`` validation, so that a bad genotype fails before any data is loaded."""
    try:
        load_genotype(name_or_path)
    except GenotypeError as err:
        raise ConfigError(f"{field}: {err}") from None
