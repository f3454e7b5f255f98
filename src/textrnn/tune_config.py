"""The `tune` section of params.yaml: what `textrnn tune` searches (an Optuna study) and how.

`space` maps a variant option (any `VariantConfig` field but `cell`) to a range (`low`/`high`, optionally
`log` or `step`) or a `choices` list. Its shape is checked on load; whether its values fit the variant
being tuned is checked when a study starts (`textrnn.tune_space.check_space`), naming `tune.space.<key>`.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from textrnn.config_types import MANY, Bool, Float, Frozen, Int, Text


class SearchRange(Frozen):
    """One key's search space: numbers from `low` to `high` (both included), or one of `choices`."""

    # Int first: a whole-number range stays whole (`hidden: {low: 8, high: 128}`).
    low: Int | Float | None = None
    high: Int | Float | None = None
    log: Bool = False
    step: Float | None = Field(None, gt=0.0)
    choices: tuple[Int | Float | Bool | Text, ...] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> SearchRange:
        ranged = self.low is not None or self.high is not None
        if self.choices is not None:
            if ranged or self.log or self.step is not None:
                raise ValueError("give either choices or low/high, not both")
            if not self.choices:
                raise ValueError("choices needs at least one value")
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs low and high, or choices")
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) is above high ({self.high:g})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("log needs low > 0 and no step")
        return self


def _default_space() -> dict[str, SearchRange]:
    # Three options every variant has; learning rate and width matter most for the lesson's models.
    return {
        "learning_rate": SearchRange(low=3e-4, high=1e-2, log=True),
        "hidden": SearchRange(low=8, high=128, log=True),
        "dropout": SearchRange(low=0.0, high=0.5),
    }


class TuneConfig(Frozen):
    trials: Int = Field(20, ge=1, le=MANY, description="trials per study (`textrnn tune --trials` overrides)")
    space: dict[str, SearchRange] = Field(default_factory=_default_space, description=(
        "option: {low, high[, log | step]} or {choices: [...]}"))
    # Optuna's MedianPruner: a trial whose validation loss at an epoch is worse than the median of the
    # finished trials' at that epoch stops there.
    prune_after_trials: Int = Field(2, ge=0, le=MANY, description="finished trials before any trial is pruned")
    prune_after_epochs: Int = Field(1, ge=0, le=MANY, description="epochs every trial runs before it can be pruned")
    storage: Text | None = Field(None, description=(
        "URL all workers reach; null: sqlite in paths.cache; env TEXTRNN_OPTUNA_STORAGE wins"))
    # A worker beats every `heartbeat_seconds`; a trial whose worker stopped beating for twice that is
    # marked failed by the next worker on the study, and its MLflow run KILLED.
    heartbeat_seconds: Int = Field(30, ge=1, le=86_400, description="a dead worker's trial fails after 2x this")

    @field_validator("space")
    @classmethod
    def _space_names_variant_options(cls, space: dict[str, SearchRange]) -> dict[str, SearchRange]:
        from textrnn.config import VariantConfig

        for key in space:
            if key not in VariantConfig.model_fields or key == "cell":
                options = ", ".join(name for name in VariantConfig.model_fields if name != "cell")
                raise ValueError(f"'{key}' is not a variant option (one of: {options})")
        return space
