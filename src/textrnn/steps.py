"""The pipeline's steps as the CLI, DVC stages and Prefect tasks call them.

Each step runs one core function and, when `tracking.enabled` is true, logs what it did to the variant's
MLflow run through `textrnn.tracking` (imported only then: with tracking off no step imports or calls
mlflow). Every step returns a plain JSON-able dict, so orchestrators can persist and cache results.

Run ids flow through files, not memory: `train_step` records the variant's run in
`models/<V>/mlflow_run.json` and the later steps reopen it, so each step also works alone (a DVC stage,
a CLI call, a Prefect task on another worker). See `textrnn.tracking` for the details.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

from textrnn.config import Config
from textrnn.files import write_json


def _tracking(cfg: Config):
    """The tracking module when tracking is on, else None (mlflow stays unimported)."""
    if not cfg.tracking.enabled:
        return None
    from textrnn import tracking

    return tracking


def prepare_step(cfg: Config) -> dict[str, Any]:
    """Load, validate and split the source; returns `data/prepared/report.json`'s content."""
    from textrnn.data import prepare

    return prepare(cfg)


def encode_step(cfg: Config) -> dict[str, Any]:
    """Fit the tokenizer and encode every split; returns the bucket report (`buckets.json`)."""
    from textrnn.tokens import encode

    return encode(cfg)


def train_step(
    cfg: Config,
    variant: str,
    resume: bool = False,
    parent_run_id: str | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Train `variant`; returns the train.json summary (+ `mlflow_run_id` when tracked).

    Tracked: a new run for the variant (nested under `parent_run_id`, `TEXTRNN_MLFLOW_PARENT_RUN_ID` or
    the DVC experiment's run), with params, tags, dataset inputs, per-epoch metrics and train.json;
    `resume` continues the recorded run instead. Untracked: `mlflow_run.json` records no run (it is a DVC
    output either way), so a later tracked step never logs into the run of a model that no longer exists.
    """
    from textrnn.train import train_variant

    tracking = _tracking(cfg)
    if tracking is None:
        cfg.variant(variant)
        write_json(cfg.paths.model_dir(variant) / "mlflow_run.json", {"run_id": None, "tracking_uri": None})
        return train_variant(cfg, variant, resume=resume, show_progress=show_progress)
    with tracking.variant_run(cfg, variant, stage="train", parent_run_id=parent_run_id, new=not resume) as run_id:
        tracking.log_training_inputs(cfg, variant)
        summary = train_variant(cfg, variant, resume=resume, on_epoch=tracking.log_epoch, show_progress=show_progress)
        tracking.log_training_summary(cfg, variant, summary)
    return {**summary, "mlflow_run_id": run_id}


def export_step(cfg: Config, variant: str) -> dict[str, Any]:
    """Export `variant` to ONNX with its parity check; returns the parity report (export.json).

    Tracked: `onnx_parity_max_abs_diff`, tag `onnx_parity_passed` and export.json on the variant's run,
    plus the pyfunc model logged from the passing export (`mlflow_model_id` in the result). When the
    export fails its check, the failure is logged, the run is marked FAILED and the ExportError
    propagates; other errors (say, no model.pt yet) leave the run alone.
    """
    from textrnn.export import ExportError, export_variant, report_path

    tracking = _tracking(cfg)
    if tracking is None:
        return export_variant(cfg, variant)
    cfg.variant(variant)
    tracking.connect(cfg)  # an unreachable server fails before the work, not after it
    report_file = report_path(cfg.paths.model_dir(variant))
    try:
        report = export_variant(cfg, variant)
    except ExportError as error:
        with tracking.variant_run(cfg, variant, stage="export"):
            tracking.log_export({**error.report, "passed": False}, report_file)
            raise  # inside the run: mlflow marks it FAILED
    with tracking.variant_run(cfg, variant, stage="export") as run_id:
        tracking.log_export(report, report_file)
        model_id = tracking.log_model(cfg, variant)
    return {**report, "mlflow_run_id": run_id, "mlflow_model_id": model_id}


def evaluate_step(cfg: Config, variant: str, device: str = "auto") -> dict[str, Any]:
    """Evaluate the exported `variant` on the test split; returns eval.json's content.

    Tracked: `test_accuracy`, `test_macro_f1`, `inference_latency_ms_b1`, the onnxruntime provider tag,
    the test dataset input, eval.json and the confusion-matrix and learning-curve plots, logged once the
    evaluation succeeded.
    """
    from textrnn.evaluate import evaluate_variant

    tracking = _tracking(cfg)
    if tracking is None:
        return evaluate_variant(cfg, variant, device=device)
    cfg.variant(variant)
    tracking.connect(cfg)  # an unreachable server fails before the work, not after it
    report = evaluate_variant(cfg, variant, device=device)
    with tracking.variant_run(cfg, variant, stage="evaluate") as run_id:
        tracking.log_evaluation(cfg, variant, report)
    return {**report, "mlflow_run_id": run_id}


def register_step(cfg: Config, variant: str) -> dict[str, Any]:
    """Register the variant's logged model as a version of `registry.model_name`; returns
    {model_name, version, variant, run_id, ...tags}. With tracking off: {registered: False, reason}."""
    tracking = _tracking(cfg)
    cfg.variant(variant)
    if tracking is None:
        return {"variant": variant, "registered": False, "reason": "tracking.enabled is false"}
    return {**tracking.register_variant(cfg, variant), "registered": True}


def promote_step(cfg: Config, versions: Sequence[str] | None = None) -> dict[str, Any]:
    """Move alias `champion` to the best candidate version if it passes the gates (see
    `tracking.decide_promotion`); returns the decision and writes it to `metrics/promotion.json`.
    With tracking off: {promoted: False, reason}."""
    from textrnn.files import write_json

    tracking = _tracking(cfg)
    if tracking is None:
        return {"promoted": False, "reason": "tracking.enabled is false"}
    decision = tracking.promote(cfg, versions)
    write_json(cfg.paths.metrics / "promotion.json", decision)
    return decision


@contextlib.contextmanager
def pipeline_run(cfg: Config, name: str | None = None) -> Iterator[str | None]:
    """One parent MLflow run around a whole pipeline invocation; yields its id (None when untracked).

    While the block runs, `TEXTRNN_MLFLOW_PARENT_RUN_ID` holds the id, so variant runs started by this
    process or its subprocesses (e.g. CLI stages) nest under it. The run ends FINISHED, or FAILED when
    the block raises.
    """
    tracking = _tracking(cfg)
    if tracking is None:
        yield None
        return
    run_id = tracking.start_pipeline_run(cfg, name)
    previous = os.environ.get(tracking.PARENT_RUN_ENV)
    os.environ[tracking.PARENT_RUN_ENV] = run_id
    succeeded = False
    try:
        yield run_id
        succeeded = True
    finally:
        if previous is None:
            os.environ.pop(tracking.PARENT_RUN_ENV, None)
        else:
            os.environ[tracking.PARENT_RUN_ENV] = previous
        tracking.end_pipeline_run(run_id, succeeded)
