"""A `Config` written out as a params file: how `params.yaml` is made from config.py's defaults.

config.py is the one place that defines a default: each field's default and its `description`, which
becomes the comment beside it. `params.yaml` spells every value out (DVC tracks its keys and people read
it) and is this module's rendering of `Config()`: `textrnn params > params.yaml` writes it, and a test
fails when the committed file is not the current rendering. With `--set`, the command shows the
resolved config a run would use, in the same form.

Variants are one line each: the architecture always, in aligned columns, so the lesson's six lines compare
at a glance; an option (pool, dropout, ...) only where it differs from its default, on a second line.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from textrnn.config import Config, VariantConfig

HEADER = """\
# textrnn's configuration, validated on load (src/textrnn/config.py): unknown keys are errors.
# Written by `textrnn params` from config.py, where each default and its comment is defined.
# Override any key with `--set dotted.key=value` (CLI) or `dvc exp run -S dotted.key=value` (DVC).
# The real job reads AG News from the Hugging Face Hub; the offline sample corpus is one override
# away: `--set data.source=sample`.
"""
COMMENT_COLUMN = 32  # where an inline comment starts, as far as the value allows
COMMENT_WIDTH = 104  # a section's comment lines
LINE_WIDTH = 118  # where a variant's options wrap
INDENT = "  "


def scalar(value: Any) -> str:
    """One value in YAML flow form: null/true/false, numbers as Python writes them, lists in brackets,
    strings plain unless YAML would read them as something else."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(scalar(item) for item in value) + "]"
    if isinstance(value, Path):
        value = str(value)
    return yaml.safe_dump(value, width=10_000).removesuffix("\n...\n").strip()


def _commented(line: str, comment: str | None) -> str:
    if not comment:
        return line
    return f"{line.ljust(COMMENT_COLUMN - 1)} # {comment}"


def _section(model: BaseModel, depth: int) -> Iterator[str]:
    """Each field of `model` as `key: value  # description`, nested models as indented blocks."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        prefix = INDENT * depth + f"{name}:"
        if isinstance(value, BaseModel):
            yield _commented(prefix, field.description)
            yield from _section(value, depth + 1)
        elif isinstance(value, dict) and all(isinstance(item, BaseModel) for item in value.values()):
            # A mapping of small models (tune.space): one flow mapping per key, its non-default fields.
            yield _commented(prefix, field.description)
            for key, item in value.items():
                stated = {k: v for k, v in item.model_dump().items() if v != type(item).model_fields[k].default}
                body = ", ".join(f"{k}: {scalar(v)}" for k, v in stated.items())
                yield f"{INDENT * (depth + 1)}{key}: {{{body}}}"
        else:
            yield _commented(f"{prefix} {scalar(value)}", field.description)


def variant_fields(variant: VariantConfig) -> dict[str, Any]:
    """What a variant's line states: every field without a default (its architecture), then each
    option whose value is not its default."""
    stated = {}
    for name, field in VariantConfig.model_fields.items():
        value = getattr(variant, name)
        if field.is_required() or value != field.default:
            stated[name] = value
    return stated


def _variants(variants: dict[str, VariantConfig]) -> Iterator[str]:
    """One flow mapping per variant: the architecture in columns aligned across the variants, then the
    options it sets on a continuation line (YAML flow mappings may span lines)."""
    required = [name for name, field in VariantConfig.model_fields.items() if field.is_required()]
    rows = {name: [f"{key}: {scalar(value)}" for key, value in variant_fields(variant).items()]
            for name, variant in variants.items()}
    widths = [max(len(cells[column]) for cells in rows.values()) for column in range(len(required))]
    name_width = max(len(name) for name in rows) + 1
    for name, cells in rows.items():
        architecture = [cell + "," + " " * (width - len(cell)) for cell, width in zip(cells, widths)]
        head = f"{INDENT}{(name + ':').ljust(name_width)} {{" + " ".join(architecture).rstrip()
        options = cells[len(required):]
        if not options:
            yield head.removesuffix(",") + "}"
            continue
        yield head
        indent = " " * (len(INDENT) + name_width + 2)
        line = ""
        for option in options:
            if line and len(indent) + len(line) + len(option) + 2 > LINE_WIDTH:
                yield indent + line + ","
                line = ""
            line = f"{line}, {option}" if line else option
        yield indent + line + "}"


def render(cfg: Config) -> str:
    """`cfg` as a params file that `config.load` reads back to an equal Config."""
    lines = [HEADER.rstrip("\n")]
    for name, field in Config.model_fields.items():
        value = getattr(cfg, name)
        if isinstance(value, BaseModel) or name == "variants":
            lines.append("")
            if field.description:
                lines.extend(f"# {text}" for text in textwrap.wrap(field.description, COMMENT_WIDTH))
            lines.append(f"{name}:")
            lines.extend(_variants(value) if name == "variants" else _section(value, 1))
        else:
            lines.append(_commented(f"{name}: {scalar(value)}", field.description))
    return "\n".join(lines) + "\n"
