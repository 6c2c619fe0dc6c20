"""Typed settings from a YAML file plus environment overrides, shared by the gateway and the worker.

Precedence: model defaults < YAML file < environment (``PREFIX_KEY__SUBKEY=value``; scalars are coerced to
the declared type, ``[a, b]`` and ``{k: v}`` are read as YAML). Anything invalid raises a
``ConfigError`` naming the key and what was expected, never a pydantic traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

ENV_NESTING = "__"

SettingsT = TypeVar("SettingsT", bound=BaseModel)


class ConfigError(Exception):
    """Invalid configuration: the message names the source, the key and what was expected."""


class StrictModel(BaseModel):
    """Base for settings sections: unknown keys are errors (a typo must not silently do nothing)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def load_settings(
    model: type[SettingsT],
    path: str | Path | None,
    *,
    env_prefix: str,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> SettingsT:
    """Build ``model`` from ``path`` (optional), the environment, then explicit ``overrides``."""
    data: dict[str, Any] = _read_yaml(Path(path)) if path else {}
    source = str(path) if path else "defaults"
    env_data = _env_overrides(environ if environ is not None else os.environ, env_prefix)
    _deep_merge(data, env_data)
    if overrides:
        _deep_merge(data, _without_none(overrides))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, env_prefix)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read settings file ({exc.strerror})") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return loaded


def _env_overrides(environ: Mapping[str, str], prefix: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(prefix):
            continue
        path = [part.lower() for part in name[len(prefix) :].split(ENV_NESTING) if part]
        if not path:
            continue
        value: Any = raw
        # Only lists and mappings are parsed here; scalars stay strings and pydantic coerces them
        # to the declared type, so a secret such as "0123" is never reinterpreted as a number.
        if raw.lstrip().startswith(("[", "{")):
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                raise ConfigError(f"{name}: expected a YAML list or mapping") from None
        node = result
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: conflicts with another environment override")
            node = child
        node[path[-1]] = value
    return result


def _without_none(values: Mapping[str, Any]) -> dict[str, Any]:
    """Drop unset options (``None``) at every level, so an absent CLI flag never overrides the file."""
    result: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            value = _without_none(value)
            if not value:
                continue
        if value is not None:
            result[key] = value
    return result


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def _describe(exc: ValidationError, source: str, env_prefix: str) -> str:
    lines = [f"invalid settings ({source}; environment prefix {env_prefix}):"]
    for error in exc.errors(include_url=False, include_input=False):
        key = ".".join(str(part) for part in error["loc"]) or "<root>"
        lines.append(f"  {key}: {error['msg']}")
    return "\n".join(lines)


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and run the chosen subcommand's handler; configuration errors exit 2, no traceback."""
    args = parser.parse_args(argv)
    try:
        result: int = args.handler(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return result
