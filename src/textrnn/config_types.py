"""The building blocks of textrnn's config models: strict scalar types and a frozen, closed base model."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict


def _not_a_bool(value: Any) -> Any:
    # YAML's true/false are Python bools, which are ints to Python and 1.0/0.0 to a lax float.
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


# Strict scalar types for every field: `epochs: true` or `vocab_size: 1e20` (a string to PyYAML) is an
# error, never a silent 1 or a traceback later. Floats take ints and numeric strings (PyYAML reads
# `1e-3` as a string; YAML 1.2 and users mean a number) but never bools, NaN or Infinity.
Int = Annotated[int, Strict()]
Float = Annotated[float, BeforeValidator(_not_a_bool), Field(allow_inf_nan=False)]
Bool = Annotated[bool, Strict()]
Text = Annotated[str, Strict()]
# Upper bounds where a huge value would overflow a native library (tokenizers, numpy, torch) with a
# traceback rather than fail cleanly; far above any sane setting.
MANY = 1_000_000_000


class Frozen(BaseModel):
    """Immutable, and an unknown key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)
