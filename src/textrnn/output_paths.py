"""`PathsConfig`: where textrnn writes (the `paths` section), and the name of every output file in it."""

from __future__ import annotations

import itertools
from pathlib import Path

from pydantic import Field

from textrnn.config_types import Frozen
from textrnn.filenames import (
    BUCKETS_FILE,
    CHECKPOINT_FILE,
    CONFUSION_MATRIX_FILE,
    EVAL_REPORT_FILE,
    HEADLINE_FILE,
    EXPORT_FAILURE_FILE,
    EXPORT_REPORT_FILE,
    LEARNING_CURVES_FILE,
    LINEAGE_FILE,
    MODEL_FILE,
    ONNX_FILE,
    PREDICTIONS_FILE,
    PREPARED_REPORT_FILE,
    PROMOTION_FILE,
    RUN_RECORD_FILE,
    TOKENIZER_FILE,
    TRAIN_REPORT_FILE,
    encoded_split_file,
    prepared_split_file,
)


class PathsConfig(Frozen):
    """Output locations, relative to the working directory (see `problem` for what is allowed), and
    every output file in them."""

    prepared: Path = Path("data/prepared")
    encoded: Path = Field(Path("data/encoded"), description="the encoded ids and tokenizer.json, published together")
    models: Path = Path("models")
    metrics: Path = Path("metrics")
    plots: Path = Path("plots")
    cache: Path = Path(".cache")

    def resolved(self, root: Path) -> dict[str, Path]:
        """{key: absolute path} with symlinks followed, relative paths taken from `root`."""
        return {key: (root / getattr(self, key)).resolve() for key in type(self).model_fields}

    def problem(self, root: Path) -> str | None:
        """Why these paths are unsafe under working directory `root`, in one line naming the key, or None.

        textrnn replaces output directories whole, so each must lie strictly inside `root` (after
        following symlinks) and no two may be the same directory or nested in one another.
        """
        root = root.resolve()
        try:
            resolved = self.resolved(root)
        except (OSError, RuntimeError, ValueError) as error:  # a symlink loop, a NUL byte
            return f"paths: cannot resolve an output path ({error})"
        for key, where in resolved.items():
            if where == root:
                return f"paths.{key}: {where} is the working directory itself; name a directory inside it"
            if not where.is_relative_to(root):
                return f"paths.{key}: {where} resolves outside the working directory {root}"
        for (first, first_at), (second, second_at) in itertools.combinations(resolved.items(), 2):
            if first_at == second_at:
                return f"paths.{second}: {second_at} is also paths.{first}; each output needs its own directory"
            for (inner, inner_at), (outer, outer_at) in (((first, first_at), (second, second_at)),
                                                         ((second, second_at), (first, first_at))):
                if inner_at.is_relative_to(outer_at):
                    return f"paths.{inner}: {inner_at} lies inside paths.{outer} ({outer_at}); outputs must not nest"
        return None

    # ---- prepare and encode
    def prepared_split(self, split: str) -> Path:
        return self.prepared / prepared_split_file(split)

    @property
    def prepared_report(self) -> Path:
        return self.prepared / PREPARED_REPORT_FILE

    def encoded_split(self, split: str) -> Path:
        return self.encoded / encoded_split_file(split)

    @property
    def tokenizer(self) -> Path:
        # Inside the encoded directory: ids and tokenizer are published in one atomic swap.
        return self.encoded / TOKENIZER_FILE

    @property
    def buckets_report(self) -> Path:
        return self.encoded / BUCKETS_FILE

    @property
    def encoded_lineage(self) -> Path:
        return self.encoded / LINEAGE_FILE

    # ---- each variant: train, export, evaluate
    def model_dir(self, variant: str) -> Path:
        return self.models / variant

    def model_file(self, variant: str) -> Path:
        return self.model_dir(variant) / MODEL_FILE

    def checkpoint(self, variant: str) -> Path:
        return self.model_dir(variant) / CHECKPOINT_FILE

    def run_record(self, variant: str) -> Path:
        """`models/<V>/mlflow_run.json`: the variant's MLflow run id (null when untracked), written by `train`."""
        return self.model_dir(variant) / RUN_RECORD_FILE

    def onnx_file(self, variant: str) -> Path:
        return self.model_dir(variant) / ONNX_FILE

    def served_tokenizer(self, variant: str) -> Path:
        """The copy of `tokenizer` that export bundles with the graph (the model directory is self-contained)."""
        return self.model_dir(variant) / TOKENIZER_FILE

    def export_report(self, variant: str) -> Path:
        return self.model_dir(variant) / EXPORT_REPORT_FILE

    def export_failure(self, variant: str) -> Path:
        return self.model_dir(variant) / EXPORT_FAILURE_FILE

    def metrics_dir(self, variant: str) -> Path:
        return self.metrics / variant

    def train_report(self, variant: str) -> Path:
        return self.metrics_dir(variant) / TRAIN_REPORT_FILE

    def eval_report(self, variant: str) -> Path:
        return self.metrics_dir(variant) / EVAL_REPORT_FILE

    def headline_metrics(self, variant: str) -> Path:
        return self.metrics_dir(variant) / HEADLINE_FILE

    def plots_dir(self, variant: str) -> Path:
        return self.plots / variant

    def predictions_file(self, variant: str) -> Path:
        return self.plots_dir(variant) / PREDICTIONS_FILE

    def confusion_matrix_plot(self, variant: str) -> Path:
        return self.plots_dir(variant) / CONFUSION_MATRIX_FILE

    def learning_curves_plot(self, variant: str) -> Path:
        return self.plots_dir(variant) / LEARNING_CURVES_FILE

    # ---- the pipeline
    @property
    def promotion_record(self) -> Path:
        return self.metrics / PROMOTION_FILE
