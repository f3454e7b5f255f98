"""The pipeline's steps as the CLI, DVC stages and Prefect tasks call them.

Each step runs one core function and, when `tracking.enabled` is true, logs what it did to the variant's
MLflow run through `textrnn.tracking` (imported only then: with tracking off no step imports or calls
mlflow). Every step returns a plain JSON-able dict, so orchestrators can persist and cache results.

Run ids flow through files, not memory: `train_step` records the variant's run in
`models/<V>/mlflow_run.json` and the later steps reopen it, so each step also works alone (a DVC stage,
a CLI call, a Prefect task on another worker). See `textrnn.tracking` for the details.

A variant step takes the variant's name and resolves it once (`Config.variant`: an unknown name is a
ConfigError listing the known ones); what it calls below gets the resolved `Variant` or its name.

One writer at a time: prepare and encode hold the `data` lock, and train, export, evaluate and register
hold their variant's lock (`textrnn.locks`); a second writer fails at once naming the holder, or waits
with `wait=True`. Inputs are verified before any MLflow run is opened or created, so a typo'd variant or
a missing/changed input leaves no run behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

from textrnn import locks
from textrnn.config import Config
from textrnn.files import write_json


def _tracking(cfg: Config):
    """The tracking module when tracking is on, else None (mlflow stays unimported)."""
    if not cfg.tracking.enabled:
        return None
    from textrnn import tracking

    return tracking


def prepare_step(cfg: Config, wait: bool = False) -> dict[str, Any]:
    """Load, validate and split the source; returns `data/prepared/report.json`'s content."""
    from textrnn.data import prepare

    with locks.data(cfg, wait):
        return prepare(cfg)


def encode_step(cfg: Config, wait: bool = False) -> dict[str, Any]:
    """Fit the tokenizer and encode every split; returns the bucket report (`buckets.json`)."""
    from textrnn.tokens import encode

    with locks.data(cfg, wait):
        return encode(cfg)


def train_step(
    cfg: Config,
    name: str,
    resume: bool = False,
    parent_run_id: str | None = None,
    show_progress: bool = False,
    wait: bool = False,
) -> dict[str, Any]:
    """Train variant `name`; returns the train.json summary (+ `mlflow_run_id` when tracked).

    In order: the variant's lock; the inputs (and with `resume` the checkpoint) verified; a run a dead
    attempt left RUNNING marked KILLED; the variant's previous outputs and run record cleared; then the
    run and the training. Tracked: a new run for the variant (nested under `parent_run_id`,
    `TEXTRNN_MLFLOW_PARENT_RUN_ID` or the DVC experiment's run), with params, tags, dataset inputs,
    per-epoch metrics and train.json; `resume` continues the recorded run instead. Untracked:
    `mlflow_run.json` records no run (it is a DVC output either way), so a later tracked step never logs
    into the run of a model that no longer exists.
    """
    from textrnn import train

    variant = cfg.variant(name)
    tracking = _tracking(cfg)
    with locks.variant(cfg, name, wait):
        record = train.check_inputs(cfg, variant)
        if resume:
            train.check_resume(cfg, variant, record)
        if tracking is not None:
            tracking.connect(cfg)  # an unreachable server fails before anything is cleared
            tracking.close_stale_run(cfg, name)
        train.clear_outputs(cfg, variant, resume=resume, run_record=not resume)
        if tracking is None:
            run_file = cfg.paths.run_record(name)
            with train.writing(run_file):
                write_json(run_file, {"run_id": None, "tracking_uri": None})
            return train.train_variant(cfg, variant, resume=resume, show_progress=show_progress)
        with tracking.variant_run(cfg, variant, stage="train", parent_run_id=parent_run_id, new=not resume) as run_id:
            tracking.log_training_inputs(cfg, variant)
            summary = train.train_variant(cfg, variant, resume=resume, on_epoch=tracking.log_epoch,
                                          show_progress=show_progress)
            tracking.log_training_summary(cfg, name, summary)
    return {**summary, "mlflow_run_id": run_id}


def export_step(cfg: Config, name: str, wait: bool = False) -> dict[str, Any]:
    """Export variant `name` to ONNX with its parity check; returns the parity report (export.json).

    Tracked: `onnx_parity_max_abs_diff`, tag `onnx_parity_passed` and export.json on the variant's run,
    plus the pyfunc model logged from the passing export (`mlflow_model_id` in the result). When the
    export fails its check, the failure (export.failed.json) is logged, the run is marked FAILED and the
    ExportError propagates; other errors (say, no model.pt yet) leave the run alone.
    """
    from textrnn.export import ExportError, export_variant

    variant = cfg.variant(name)
    tracking = _tracking(cfg)
    with locks.variant(cfg, name, wait):
        if tracking is None:
            return export_variant(cfg, variant)
        tracking.connect(cfg)  # an unreachable server fails before the work, not after it
        try:
            report = export_variant(cfg, variant)
        except ExportError as error:
            with tracking.variant_run(cfg, variant, stage="export"):
                tracking.log_export({**error.report, "passed": False}, cfg.paths.export_failure(name))
                raise  # inside the run: it ends FAILED
        with tracking.variant_run(cfg, variant, stage="export") as run_id:
            tracking.log_export(report, cfg.paths.export_report(name))
            model_id = tracking.log_model(cfg, name)
    return {**report, "mlflow_run_id": run_id, "mlflow_model_id": model_id}


def evaluate_step(cfg: Config, name: str, device: str = "auto", wait: bool = False) -> dict[str, Any]:
    """Evaluate the exported variant `name` on the test split; returns eval.json's content.

    Tracked: `test_accuracy`, `test_macro_f1`, `inference_latency_ms_b1`, the onnxruntime provider tag,
    the test dataset input, eval.json and the confusion-matrix and learning-curve plots, logged once the
    evaluation succeeded.
    """
    from textrnn.evaluate import evaluate_variant

    variant = cfg.variant(name)
    tracking = _tracking(cfg)
    with locks.variant(cfg, name, wait):
        if tracking is None:
            return evaluate_variant(cfg, variant, device=device)
        tracking.connect(cfg)  # an unreachable server fails before the work, not after it
        report = evaluate_variant(cfg, variant, device=device)
        with tracking.variant_run(cfg, variant, stage="evaluate") as run_id:
            tracking.log_evaluation(cfg, name, report)
    return {**report, "mlflow_run_id": run_id}


def verify_registrable(cfg: Config, variant: str) -> tuple[dict[str, Any], str]:
    """What register may register, checked on disk: model.onnx, its tokenizer and model.pt are the files
    export.json records, eval.json scored this model.onnx, and model.pt records its training config.
    Returns (model.pt's training config, model.onnx's sha256); raises LineageError naming both files."""
    from textrnn import lineage
    from textrnn.evaluate import check_export
    from textrnn.files import read_json
    from textrnn.checkpoints import model_lineage

    export_report = check_export(cfg, variant)
    eval_file, model_file = cfg.paths.eval_report(variant), cfg.paths.model_file(variant)
    if not eval_file.is_file():
        raise lineage.LineageError(f"{eval_file}: not found (run `textrnn evaluate` first)")
    lineage.verify_inputs(read_json(eval_file).get("lineage"), eval_file, only=[cfg.paths.onnx_file(variant)])
    trained = model_lineage(model_file).get("config")
    if not trained:
        raise lineage.LineageError(f"{model_file}: records no training config (made by an older textrnn?); train again")
    return trained, export_report["onnx_sha256"]


def register_step(cfg: Config, name: str, wait: bool = False) -> dict[str, Any]:
    """Register the variant's logged model as a version of `registry.model_name`; returns
    {model_name, version, variant, run_id, ...tags}. With tracking off: {registered: False, reason}.

    Refuses (LineageError, one line naming both files) unless `verify_registrable` holds and the run's
    logged params and model are those of model.pt and model.onnx (`registry.check_run_matches`)."""
    tracking = _tracking(cfg)
    cfg.variant(name)  # an unknown name fails even with tracking off
    if tracking is None:
        return {"variant": name, "registered": False, "reason": "tracking.enabled is false"}
    with locks.variant(cfg, name, wait):
        trained, onnx_sha256 = verify_registrable(cfg, name)
        from textrnn import registry

        return {**registry.register_variant(cfg, name, trained, onnx_sha256), "registered": True}


def promote_step(cfg: Config, versions: Sequence[str] | None = None) -> dict[str, Any]:
    """Move alias `champion` to the best candidate version if it passes the gates (see
    `promotion.decide_promotion`); returns the decision and writes it to `metrics/promotion.json`.
    With tracking off: {promoted: False, reason}."""
    tracking = _tracking(cfg)
    if tracking is None:
        return {"promoted": False, "reason": "tracking.enabled is false"}
    from textrnn import registry

    decision = registry.promote(cfg, versions)
    write_json(cfg.paths.promotion_record, decision)
    return decision


def close_stale_runs(cfg: Config, variants: Sequence[str] | None = None) -> list[str]:
    """For a pipeline's crash handler: mark KILLED each variant's recorded run that a dead attempt left
    RUNNING; returns the variants whose run was closed ([] when untracked)."""
    tracking = _tracking(cfg)
    if tracking is None:
        return []
    tracking.connect(cfg)
    return [name for name in (variants or list(cfg.variants)) if tracking.close_stale_run(cfg, name)]


@contextlib.contextmanager
def pipeline_run(cfg: Config, name: str | None = None, tags: dict[str, str] | None = None) -> Iterator[str | None]:
    """One parent MLflow run around a whole pipeline invocation; yields its id (None when untracked).

    While the block runs, `TEXTRNN_MLFLOW_PARENT_RUN_ID` holds the id, so variant runs started by this
    process or its subprocesses (e.g. CLI stages) nest under it. The run ends FINISHED, KILLED when the
    block is stopped (KeyboardInterrupt, Terminated) or FAILED when it raises.
    """
    tracking = _tracking(cfg)
    if tracking is None:
        yield None
        return
    from textrnn import runs

    run_id = tracking.start_pipeline_run(cfg, name, tags)
    previous = os.environ.get(tracking.PARENT_RUN_ENV)
    os.environ[tracking.PARENT_RUN_ENV] = run_id
    status = runs.FAILED
    try:
        yield run_id
        status = runs.FINISHED
    except BaseException as error:
        status = runs.status_for(error)
        raise
    finally:
        if previous is None:
            os.environ.pop(tracking.PARENT_RUN_ENV, None)
        else:
            os.environ[tracking.PARENT_RUN_ENV] = previous
        tracking.end_pipeline_run(run_id, status)
