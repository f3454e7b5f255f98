"""Reading a params file and applying `--set dotted.key=value` overrides: the raw mapping before validation."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from textrnn.errors import TextrnnError

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(TextrnnError):
    """A configuration problem, stated in one line that names the file and key."""


def parse_override(override: str) -> tuple[list[str], Any]:
    """Split `dotted.key=value` into its key path and a YAML-typed value (as `dvc exp run -S` does)."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"bad override '{override}': expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"bad override '{override}': value is not valid YAML") from None
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of `raw` with each `dotted.key=value` set; intermediate keys are created."""
    merged = copy.deepcopy(raw)
    for override in overrides:
        path, value = parse_override(override)
        node = merged
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"bad override '{override}': '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return merged


def read_raw(path: Path | str = DEFAULT_PARAMS) -> dict[str, Any]:
    """The YAML mapping in `path` ({} for an empty file); raises ConfigError if missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line} is not valid UTF-8 (byte 0x{error.object[error.start]:02x})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return raw
