"""A study's search space against the variant it tunes: checked before any trial, sampled per trial.

Kept apart from Optuna's objects but for `suggest`, which takes an Optuna trial (or anything with the same
`suggest_*` methods), so the checks run and are tested without a study.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import ValidationError

from textrnn.config import Config, ConfigError, Variant, VariantConfig
from textrnn.tune_config import SearchRange


def _kind(key: str) -> str:
    """'int', 'float' or 'choice': how a variant option is searched, from its annotation."""
    annotation = VariantConfig.model_fields[key].annotation
    members = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    # `Float | None` arrives as Optional[Annotated[float, ...]]: the bare type is Annotated's first argument.
    kinds = {typing.get_args(arg)[0] if typing.get_origin(arg) is typing.Annotated else arg
             for arg in members if arg is not type(None)}
    if kinds == {int}:
        return "int"
    if kinds == {float}:
        return "float"
    return "choice"


def _values_to_check(search: SearchRange) -> list[Any]:
    return list(search.choices) if search.choices is not None else [search.low, search.high]


def check_space(cfg: Config, variant: Variant, source: str = "params.yaml") -> None:
    """Raise ConfigError (one line naming `tune.space.<key>`) unless every key can be searched as given
    and its bounds or choices make a valid variant of `variant`."""
    for key, search in cfg.tune.space.items():
        where = f"{source}: tune.space.{key}"
        kind = _kind(key)
        if search.choices is None and kind == "choice":
            raise ConfigError(f"{where}: '{key}' takes a choices list, not a range")
        if kind == "int" and search.choices is None:
            bounds = [search.low, search.high] + ([search.step] if search.step is not None else [])
            if any(float(value) != int(value) for value in bounds):
                raise ConfigError(f"{where}: '{key}' is a whole number; low, high and step must be too")
        for value in _values_to_check(search):
            if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            try:
                VariantConfig.model_validate({**variant.config.model_dump(), key: value})
            except ValidationError as error:
                first = error.errors()[0]
                raise ConfigError(f"{where}: {value!r} does not fit variant '{variant.name}': "
                                  f"{first['msg']}") from None


def suggest(trial: Any, space: dict[str, SearchRange]) -> dict[str, Any]:
    """One value per key from an Optuna trial's `suggest_*` methods (so the study records them)."""
    chosen: dict[str, Any] = {}
    for key, search in space.items():
        kind = _kind(key)
        if search.choices is not None:
            chosen[key] = trial.suggest_categorical(key, list(search.choices))
        elif kind == "int":
            chosen[key] = trial.suggest_int(key, int(search.low), int(search.high), log=search.log,
                                            step=int(search.step or 1))
        else:
            chosen[key] = trial.suggest_float(key, float(search.low), float(search.high), log=search.log,
                                              step=search.step)
    return chosen


def tuned(variant: Variant, params: dict[str, Any], name: str | None = None) -> Variant:
    """`variant` with `params` applied (validated), named `name` (default: the same name)."""
    return Variant(name or variant.name, VariantConfig.model_validate({**variant.config.model_dump(), **params}))
