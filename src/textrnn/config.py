"""The validated configuration: `params.yaml` loaded once into frozen pydantic models.

Every other module receives a `Config` (or a slice of it) from its caller; nothing else reads
`params.yaml`. Unknown keys, wrong types and impossible values fail with a `ConfigError` whose message
is one line naming the file and the dotted key.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from textrnn.errors import TextrnnError

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(TextrnnError):
    """A configuration problem, stated in one line that names the file and key."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(_Frozen):
    """Output locations, relative to the working directory."""

    prepared: Path = Path("data/prepared")
    encoded: Path = Path("data/encoded")
    artifacts: Path = Path("artifacts")
    models: Path = Path("models")
    metrics: Path = Path("metrics")
    plots: Path = Path("plots")
    cache: Path = Path(".cache")

    @property
    def tokenizer(self) -> Path:
        return self.artifacts / "tokenizer.json"

    def model_dir(self, variant: str) -> Path:
        return self.models / variant

    def metrics_dir(self, variant: str) -> Path:
        return self.metrics / variant

    def plots_dir(self, variant: str) -> Path:
        return self.plots / variant


class SampleConfig(_Frozen):
    """Size of the embedded, seeded sample corpus (see `textrnn.sample`)."""

    train_rows: int = Field(4000, ge=40)
    test_rows: int = Field(800, ge=8)


class DataConfig(_Frozen):
    source: Literal["hf", "csv", "parquet", "sample"] = "hf"
    hf_name: str = "fancyzhx/ag_news"
    train_path: Path | None = None
    test_path: Path | None = None
    text_fields: tuple[str, ...] = ("title", "description")
    classes: tuple[str, ...] = ("World", "Sports", "Business", "Sci/Tech")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    max_bad_fraction: float = Field(0.01, ge=0.0, lt=1.0)
    sample: SampleConfig = SampleConfig()

    @field_validator("classes")
    @classmethod
    def _at_least_two_classes(cls, classes: tuple[str, ...]) -> tuple[str, ...]:
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ValueError("needs at least two distinct class names")
        return classes

    @field_validator("text_fields")
    @classmethod
    def _some_text_fields(cls, fields: tuple[str, ...]) -> tuple[str, ...]:
        if not fields:
            raise ValueError("needs at least one field")
        return fields

    @model_validator(mode="after")
    def _local_sources_have_paths(self) -> DataConfig:
        if self.source in ("csv", "parquet") and (self.train_path is None or self.test_path is None):
            raise ValueError(f"source '{self.source}' needs data.train_path and data.test_path")
        return self


class TokenizerConfig(_Frozen):
    vocab_size: int = Field(20000, ge=3)
    max_len: int = Field(200, ge=1)
    min_frequency: int = Field(1, ge=1)


class BucketsConfig(_Frozen):
    """Sort-within-chunks batching (see `textrnn.bucketing`); `enabled: false` batches at random."""

    enabled: bool = True
    chunk_batches: int = Field(64, ge=1)
    token_budget: int | None = Field(None, ge=1)


class TrainConfig(_Frozen):
    epochs: int = Field(8, ge=1)
    learning_rate: float = Field(1e-3, gt=0.0)
    grad_clip: float = Field(1.0, gt=0.0)
    # Sparse embedding gradients with SparseAdam (lazy Adam) for the table, dense Adam elsewhere (optim.py).
    sparse_embedding: bool = True
    patience: int = Field(2, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)


class VariantConfig(_Frozen):
    """One model variant: the architecture `TextRNN` builds and the batch size it trains with."""

    cell: Literal["rnn", "lstm", "gru", "bag"]
    embed_dim: int = Field(64, ge=1)
    hidden: int = Field(16, ge=1)
    layers: int = Field(1, ge=1)
    bidirectional: bool = False
    masked: bool = True
    batch_size: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _bag_is_a_single_masked_mean(self) -> VariantConfig:
        if self.cell == "bag" and (self.layers != 1 or self.bidirectional or not self.masked):
            raise ValueError("cell 'bag' takes no layers/bidirectional and is always masked")
        return self


def _default_variants() -> dict[str, VariantConfig]:
    return {
        "rnn": VariantConfig(cell="rnn", hidden=16, masked=False, batch_size=16),
        "rnn_masked": VariantConfig(cell="rnn", hidden=16, batch_size=16),
        "lstm": VariantConfig(cell="lstm", hidden=8, batch_size=8),
        "gru": VariantConfig(cell="gru", hidden=32, batch_size=16),
        "bilstm": VariantConfig(cell="lstm", embed_dim=128, hidden=64, layers=2, bidirectional=True, batch_size=16),
        "bag": VariantConfig(cell="bag", batch_size=16),
    }


class TrackingConfig(_Frozen):
    enabled: bool = True
    experiment: str = "textrnn"


class RegistryConfig(_Frozen):
    model_name: str = "agnews-rnn"
    min_delta: float = Field(0.0, ge=0.0)


class OrchestrationConfig(_Frozen):
    mode: Literal["local", "distributed"] = "local"
    max_concurrency: int = Field(2, ge=1)
    work_pool: str = "gpu"


class Config(_Frozen):
    seed: int = 42
    paths: PathsConfig = PathsConfig()
    data: DataConfig = DataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    buckets: BucketsConfig = BucketsConfig()
    train: TrainConfig = TrainConfig()
    variants: dict[str, VariantConfig] = Field(default_factory=_default_variants)
    tracking: TrackingConfig = TrackingConfig()
    registry: RegistryConfig = RegistryConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()

    @field_validator("variants")
    @classmethod
    def _variant_names_are_identifiers(cls, variants: dict[str, VariantConfig]) -> dict[str, VariantConfig]:
        if not variants:
            raise ValueError("needs at least one variant")
        for name in variants:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"variant name '{name}' must be letters, digits, '_' or '-'")
        return variants

    def variant(self, name: str) -> VariantConfig:
        """The named variant's config; raises ConfigError listing the known names."""
        try:
            return self.variants[name]
        except KeyError:
            raise ConfigError(f"unknown variant '{name}' (known: {', '.join(self.variants)})") from None


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


def _first_error_line(source: str, error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    return f"{source}: {key}: {first['msg']}"


def from_dict(raw: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a plain mapping into a Config, raising ConfigError with one line on failure."""
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_first_error_line(source, error)) from None


def read_raw(path: Path | str = DEFAULT_PARAMS) -> dict[str, Any]:
    """The YAML mapping in `path` ({} for an empty file); raises ConfigError if missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return raw


def load(path: Path | str = DEFAULT_PARAMS, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load `params.yaml`, apply `dotted.key=value` overrides, and validate the result."""
    return from_dict(apply_overrides(read_raw(path), overrides), source=str(path))
