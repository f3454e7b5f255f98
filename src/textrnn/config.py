"""The validated configuration: `params.yaml` loaded once into frozen pydantic models.

Every other module receives a `Config` (or a slice of it) from its caller; nothing else reads
`params.yaml`. Unknown keys, wrong types and impossible values fail with a `ConfigError` whose message
is one line naming the file and the dotted key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import Field, ValidationError, field_validator, model_validator

from textrnn.config_types import MANY, Bool, Float, Frozen, Int, Text
from textrnn.output_paths import PathsConfig
from textrnn.params_file import DEFAULT_PARAMS, ConfigError, apply_overrides, read_raw  # noqa: F401 (public here)
from textrnn.tune_config import TuneConfig


class SampleConfig(Frozen):
    """Size of the embedded, seeded sample corpus (see `textrnn.sample`)."""

    train_rows: Int = Field(4000, ge=40, le=100_000_000)
    test_rows: Int = Field(800, ge=8, le=100_000_000)


class DataConfig(Frozen):
    source: Literal["hf", "csv", "parquet", "sample"] = Field("hf", description="hf | csv | parquet | sample")
    hf_name: Text = "fancyzhx/ag_news"
    train_path: Path | None = Field(None, description="csv/parquet sources: local files")
    test_path: Path | None = None
    text_fields: tuple[Text, ...] = ("title", "description")
    classes: tuple[Text, ...] = ("World", "Sports", "Business", "Sci/Tech")
    val_fraction: Float = Field(0.1, gt=0.0, lt=1.0)
    max_bad_fraction: Float = Field(0.01, ge=0.0, lt=1.0)
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


class TokenizerConfig(Frozen):
    vocab_size: Int = Field(20000, ge=3, le=10_000_000)
    max_len: Int = Field(200, ge=1, le=1_000_000)
    min_frequency: Int = Field(1, ge=1, le=MANY)


class BucketsConfig(Frozen):
    """Sort-within-chunks batching (see `textrnn.bucketing`); `enabled: false` batches at random."""

    enabled: Bool = Field(True, description="false: plain shuffled batches (the baseline bucketing is measured against)")
    chunk_batches: Int = Field(64, ge=1, le=MANY, description="sort by length within chunks of this many batches")
    token_budget: Int | None = Field(None, ge=1, le=MANY, description="optional cap on tokens per batch")


class TrainConfig(Frozen):
    epochs: Int = Field(8, ge=1, le=1_000_000)
    learning_rate: Float = Field(1e-3, gt=0.0)
    grad_clip: Float = Field(1.0, gt=0.0)
    # Sparse embedding gradients with SparseAdam (lazy Adam) for the table, dense Adam elsewhere (optim.py).
    sparse_embedding: Bool = Field(
        True, description="update only the embedding rows a batch uses (SparseAdam); false: dense Adam")
    patience: Int = Field(2, ge=1, le=1_000_000, description="early stopping on validation loss")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto | cpu | cuda")
    # One intra-op thread per training process: the LSTM is no faster with a second one on an idle machine
    # and ~30x slower with it beside one busy process (bench/concurrency.py). Parallelism comes from
    # variants training side by side in processes of their own. null: torch's default.
    threads: Int | None = Field(
        1, ge=1, le=4096, description="torch CPU threads per training process (bench/concurrency.py: why 1)")


class VariantConfig(Frozen):
    """One model variant: the architecture `TextRNN` builds and the batch size it trains with, always
    stated; then options, each at the lesson's recipe unless a variant sets it."""

    cell: Literal["rnn", "lstm", "gru", "bag"]
    embed_dim: Int = Field(ge=1, le=65_536)
    hidden: Int = Field(ge=1, le=65_536)
    layers: Int = Field(ge=1, le=64)
    bidirectional: Bool
    masked: Bool
    batch_size: Int = Field(ge=1, le=1_048_576)
    # How the head reads the last layer's outputs (models.py): `last` state, or max/mean/attention over the
    # real steps. Regularisation: dropout on the head's features and between layers, and on whole
    # embedding channels. Every default reproduces the lesson's models exactly.
    pool: Literal["last", "max", "mean", "attention"] = "last"
    dropout: Float = Field(0.0, ge=0.0, lt=1.0)
    embed_dropout: Float = Field(0.0, ge=0.0, lt=1.0)
    token_dropout: Float = Field(0.0, ge=0.0, lt=1.0)  # word dropout: a real token becomes [UNK]
    # The head also reads the mean of the real tokens' embeddings (what `bag` reads), beside the pooled
    # recurrent features: a shortcut past the recurrence for the words alone.
    embedding_skip: Bool = False
    # Adversarial training (FGM, Miyato et al. 2017): each step also trains on the batch's embeddings moved
    # by this L2 norm per row in the direction that raises the loss most. 0: off.
    adversarial: Float = Field(0.0, ge=0.0, le=1_000.0)
    # Consistency between two dropout draws (R-Drop, Liang et al. 2021): each step runs the batch twice and
    # adds this weight times the symmetric KL divergence of the two predictions to their mean loss. 0: off.
    consistency: Float = Field(0.0, ge=0.0, le=1_000.0)
    # Validation, early stopping and the published weights use an exponential moving average of the
    # weights over the training steps, with this decay per step (torch's AveragedModel). 0: off.
    weight_average: Float = Field(0.0, ge=0.0, lt=1.0)
    # Training options (optim.py, train.py): decoupled weight decay on the dense non-bias weights, label
    # smoothing in the loss, linear warmup then a constant or cosine learning rate, stepped per batch.
    weight_decay: Float = Field(0.0, ge=0.0, lt=1.0)
    label_smoothing: Float = Field(0.0, ge=0.0, lt=1.0)
    warmup_epochs: Float = Field(0.0, ge=0.0, le=1_000_000)
    schedule: Literal["constant", "cosine"] = "constant"
    # The embedding's optimizer for this variant (true: lazy SparseAdam, false: dense Adam); null follows
    # train.sparse_embedding. Dense Adam keeps moving a rare word's row on its momentum, which lazy Adam does
    # not (bench/keras_gap.py), but slower (the sparse-update speed-up of bench/train_throughput.py).
    sparse_embedding: Bool | None = None
    # This variant's learning rate; null follows train.learning_rate. What `textrnn tune --apply` writes
    # when a study tuned it.
    learning_rate: Float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _bag_is_a_single_masked_mean(self) -> VariantConfig:
        if self.cell == "bag" and (self.layers != 1 or self.bidirectional or not self.masked):
            raise ValueError("cell 'bag' takes no layers/bidirectional and is always masked")
        # Pooling over steps needs to know which steps are real: only the masked recurrent path does.
        if self.pool != "last" and (self.cell == "bag" or not self.masked):
            raise ValueError(f"pool '{self.pool}' needs a masked recurrent cell (rnn/lstm/gru with masked: true)")
        if self.embedding_skip and (self.cell == "bag" or not self.masked):
            raise ValueError("embedding_skip needs a masked recurrent cell (rnn/lstm/gru with masked: true)")
        return self


class Variant(NamedTuple):
    """A variant resolved once, at the edge (`Config.variant`): its name, which names its files and its
    MLflow run, and its config. What lies below the steps takes one, so no name is looked up twice."""

    name: str
    config: VariantConfig


def _default_variants() -> dict[str, VariantConfig]:
    lesson = {"embed_dim": 64, "layers": 1, "bidirectional": False, "masked": True, "batch_size": 16}
    pooled = {"cell": "lstm", "embed_dim": 64, "hidden": 64, "layers": 1, "bidirectional": True, "masked": True,
              "batch_size": 16, "dropout": 0.5, "embed_dropout": 0.3, "label_smoothing": 0.1, "warmup_epochs": 0.5,
              "schedule": "cosine", "sparse_embedding": False}
    tuned = {**pooled, "dropout": 0.3615, "embed_dropout": 0.086, "token_dropout": 0.5858, "learning_rate": 0.0038}
    return {
        "rnn": VariantConfig(**{**lesson, "cell": "rnn", "hidden": 16, "masked": False}),
        "rnn_masked": VariantConfig(**{**lesson, "cell": "rnn", "hidden": 16}),
        "lstm": VariantConfig(**{**lesson, "cell": "lstm", "hidden": 8, "batch_size": 8}),
        "gru": VariantConfig(**{**lesson, "cell": "gru", "hidden": 32}),
        "bilstm": VariantConfig(cell="lstm", embed_dim=128, hidden=64, layers=2, bidirectional=True, masked=True,
                                batch_size=16),
        "bag": VariantConfig(**{**lesson, "cell": "bag", "hidden": 16}),
        # Beyond the lesson: pooled BiLSTMs, regularised, with dense Adam on the embedding. `tuned` is the
        # learning rate and dropouts `textrnn tune` found on seed 42's validation split (bench/quality_tune.py),
        # from the pooled recipe above; `bilstm_mean` is that study's best trial.
        "bilstm_mean": VariantConfig(**{**tuned, "hidden": 34}, pool="mean"),
        # With 64 units, max pooling and adversarial training, chosen on the validation splits of tuning
        # seeds 42-46 (bench/quality.py --metric val; README "Models").
        "bilstm_adv": VariantConfig(**tuned, pool="max", adversarial=0.05),
    }


class TrackingConfig(Frozen):
    enabled: Bool = True
    experiment: Text = "textrnn"


class RegistryConfig(Frozen):
    model_name: Text = "agnews-rnn"
    min_delta: Float = Field(0.0, ge=0.0, description="a new champion must beat the current one by at least this much")


class OrchestrationConfig(Frozen):
    mode: Literal["local", "distributed"] = Field(
        "local", description="local | distributed (train-variant deployments on a work pool)")
    max_concurrency: Int = Field(2, ge=1, le=4096)
    work_pool: Text = "gpu"


class Config(Frozen):
    # numpy's legacy seeding takes 0 <= seed < 2**32; one range for every library.
    seed: Int = Field(42, ge=0, lt=2**32)
    paths: PathsConfig = Field(PathsConfig(), description=(
        "Outputs, each a directory strictly inside the working directory (no two nested); textrnn replaces a "
        "directory only if it made it (it holds a `.textrnn-output` marker)."))
    data: DataConfig = DataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    buckets: BucketsConfig = BucketsConfig()
    train: TrainConfig = TrainConfig()
    variants: dict[str, VariantConfig] = Field(default_factory=_default_variants, description=(
        "The lesson's models (DESIGN.md), `bag`, the bag-of-embeddings baseline that cannot see order, and two "
        "pooled BiLSTMs that use the options. "
        "A variant states its architecture; an option it leaves out (pool, dropout, ...) keeps the lesson's recipe "
        "(VariantConfig in src/textrnn/config.py)."))
    tracking: TrackingConfig = TrackingConfig()
    registry: RegistryConfig = RegistryConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    tune: TuneConfig = Field(TuneConfig(), description=(
        "Hyperparameter search (`textrnn tune --variant V`): an Optuna study whose trials are MLflow runs under "
        "the study's run, pruned on validation loss; workers anywhere share the study through `storage`."))

    @field_validator("variants")
    @classmethod
    def _variant_names_are_identifiers(cls, variants: dict[str, VariantConfig]) -> dict[str, VariantConfig]:
        if not variants:
            raise ValueError("needs at least one variant")
        for name in variants:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"variant name '{name}' must be letters, digits, '_' or '-'")
        return variants

    def check_paths(self, root: Path | None = None, source: str = "<config>") -> None:
        """Raise ConfigError (one line naming `source` and the key) unless every `paths.*` lies strictly
        inside working directory `root` (default: the current one), no two overlap, and no input file
        (`data.train_path`/`test_path`) lies inside an output directory, which textrnn replaces whole."""
        root = (root or Path.cwd()).resolve()
        problem = self.paths.problem(root)
        if problem is None:
            outputs = self.paths.resolved(root)
            for key in ("train_path", "test_path"):
                given = getattr(self.data, key)
                where = (root / given).resolve() if given is not None else None
                inside = [name for name, output in outputs.items() if where is not None and where.is_relative_to(output)]
                if inside:
                    problem = (f"data.{key}: {where} lies inside paths.{inside[0]}, which textrnn replaces whole; "
                               "keep inputs outside the output directories")
                    break
        if problem:
            raise ConfigError(f"{source}: {problem}")

    def variant(self, name: str) -> Variant:
        """The named variant, resolved; raises ConfigError listing the known names."""
        try:
            return Variant(name, self.variants[name])
        except KeyError:
            raise ConfigError(f"unknown variant '{name}' (known: {', '.join(self.variants)})") from None


def _first_error_line(source: str, error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    given = first.get("input")
    # Name a wrong scalar as given (`'1e20'`, `True`): the message alone does not say what was read.
    shown = f" (got {given!r:.60})" if isinstance(given, (str, int, float)) and first["type"] != "missing" else ""
    return f"{source}: {key}: {first['msg']}{shown}"


def from_dict(raw: dict[str, Any], source: str = "<config>") -> Config:
    """Validate a plain mapping into a Config whose paths are safe in the current working directory
    (`Config.check_paths`), raising ConfigError with one line on failure."""
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_first_error_line(source, error)) from None
    cfg.check_paths(source=source)
    return cfg


def load(path: Path | str = DEFAULT_PARAMS, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load `params.yaml`, apply `dotted.key=value` overrides, and validate the result (paths included:
    see `Config.check_paths`)."""
    return from_dict(apply_overrides(read_raw(path), overrides), source=str(path))
