"""Reading and writing configs: strict dict -> dataclass conversion, YAML recipes (``extends``,
shipped recipe names) and ``key=value`` overrides, shared by every config in the package.

A leaf module: the model configs use ``from_dict`` to read ``config.json``, the codec trainer and
the augment recipes load through it, and ``config.py`` composes the run config on top of it, so it
imports none of them. The recipe rules are ``config.py``'s docstring.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C")


class ConfigError(ValueError):
    """A recipe or override does not match the config schema."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` (after ``get_type_hints``); int -> float allowed."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: expected {tp}, got {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def check_keys(cls: type, data: Any, where: str = "") -> None:
    """Unknown keys anywhere in the (nested) mapping -> ConfigError listing the valid keys."""
    if not isinstance(data, dict):
        return
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; valid keys under "
            f"{where or 'the top level'}: {sorted(fields)}"
        )
    for name, value in data.items():
        if _is_dataclass_type(hints[name]):
            check_keys(hints[name], value, f"{where}.{name}" if where else name)


def from_dict(cls: type[C], data: dict | None, where: str = "") -> C:
    """Build dataclass ``cls`` from a (nested) mapping, rejecting unknown keys."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    data = dict(data or {})
    check_keys(cls, data, where)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        path = f"{where}.{name}" if where else name
        if _is_dataclass_type(tp):
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{path}: expected a mapping, got {value!r}")
            kwargs[name] = from_dict(tp, value, path)
        else:
            kwargs[name] = _coerce(value, tp, path)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


def _parse_scalar(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # "1e-3" is a str in YAML 1.1; users mean a float.
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            return value
    return value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` strings to a nested mapping (copy)."""
    data = json.loads(json.dumps(data or {}))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.max_steps=100)")
        key, text = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = _parse_scalar(text)
    return data


# --- recipes ------------------------------------------------------------------------------------


def recipes_dir() -> Path:
    """The shipped recipes: ``whispergpt/configs`` in an installed wheel, else ``<repo>/configs``."""
    pkg = Path(__file__).resolve().parent
    installed = pkg / "configs"  # the wheel maps the top-level configs/ here (pyproject package-dir)
    return installed if installed.is_dir() else pkg.parent / "configs"


def _shipped(name: str | os.PathLike) -> Path | None:
    p = Path(name)
    if p.is_absolute():
        return None
    if p.parts[:1] == ("configs",):  # "configs/tiny.yaml" from outside the checkout
        p = Path(*p.parts[1:])
    root = recipes_dir()
    for cand in (root / p, root / p.with_name(p.name + ".yaml")):
        if cand.is_file():
            return cand
    return None


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    """A recipe file: the path if it exists, else the shipped recipe of that name (``tiny.yaml``,
    ``tiny``, ``configs/tiny.yaml``, ``compare/tiny/paper_hybrid.yaml``)."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    found = _shipped(p)
    if found is None:
        names = sorted(str(q.relative_to(recipes_dir())) for q in recipes_dir().glob("*.yaml"))
        raise ConfigError(f"config file {p} not found (not a file, nor a shipped recipe; shipped: {names})")
    return found


def deep_merge(base: dict, child: dict) -> dict:
    """``child`` over ``base`` (copies): mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_recipe(name_or_path: str | os.PathLike, _chain: tuple[Path, ...] = ()) -> dict:
    """A recipe as a mapping, its ``extends`` chain merged in (child wins)."""
    path = recipe_path(name_or_path).resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain[_chain.index(path) :], path))
        raise ConfigError(f"recipe extends form a cycle: {cycle}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    parents = data.pop("extends", None)
    if parents is None:
        return data
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(x, str) for x in parents):
        raise ConfigError(f"{path}: extends must be a recipe name or a list of them, got {parents!r}")
    merged: dict = {}
    for parent in parents:
        local = path.parent / parent
        target = local if local.is_file() else _shipped(parent)
        if target is None:
            raise ConfigError(f"{path}: extends {parent!r}: no such recipe next to it nor shipped")
        merged = deep_merge(merged, load_recipe(target, (*_chain, path)))
    return deep_merge(merged, data)


def load_config(cls: type[C], path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> C:
    """Recipe (optional; path or shipped name) + overrides -> validated dataclass ``cls``."""
    data = load_recipe(path) if path is not None else {}
    return from_dict(cls, apply_overrides(data, overrides or []))


def to_dict(cfg: Any) -> dict:
    """The config as plain data; a config with a ``trim_dict(data)`` method (the run config: only
    its task's model section) trims the result."""
    out = dataclasses.asdict(cfg)
    if hasattr(cfg, "trim_dict"):
        cfg.trim_dict(out)
    return out


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
