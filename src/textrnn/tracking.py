"""MLflow runs: connection, one run per variant and pipeline, stage logging, the logged pyfunc model.

The pipeline steps (`textrnn.steps`) call this module only when `tracking.enabled` is true; the core
modules never import it.

Where runs go
    `MLFLOW_TRACKING_URI` when set. Otherwise a local store in the working directory (the project root,
    where the CLI, DVC and Prefect run): `sqlite:////<abs>/mlflow.db` (four slashes: `sqlite:///` plus
    an absolute path) with artifacts under `<abs>/mlartifacts/`; open it with
    `mlflow ui --backend-store-uri sqlite:///mlflow.db`. A remote http(s) server is probed once per
    stage (`GET <uri>/health`, PROBE_TIMEOUT_S): when nothing answers, the stage stops with one line
    instead of minutes of retries.

How runs and ids flow between stages
    One variant = one MLflow run, named after the variant. `train` creates it (under a parent run, see
    below) and records `{run_id, experiment_id, tracking_uri}` in `models/<V>/mlflow_run.json`, next to
    the model it describes; `export` and `evaluate` reopen that run id and log into it, so a stage run
    alone from the CLI or DVC still lands in its variant's run. `export` logs the pyfunc model and tags
    the run with its `model_id`; `register` turns that logged model into a registry version.
    The parent run groups one pipeline invocation: `steps.pipeline_run` (a Prefect flow, a script)
    passes its id down or exports it as `TEXTRNN_MLFLOW_PARENT_RUN_ID` for subprocesses; under
    `dvc exp run` (which sets `DVC_EXP_NAME`) the first train stage creates a parent named after the
    experiment and later stages find it by tag.

How a run ends
    A stage holds its variant's run RUNNING only while it works, tagged with its pid and host, and ends
    it FINISHED, KILLED (SIGINT/SIGTERM) or FAILED (`textrnn.runs`); a run a SIGKILLed attempt left
    RUNNING is marked KILLED by the next attempt on the variant (`close_stale_run`). No run is created
    before the variant name and the stage's inputs are checked. Credentials in the tracking URI are
    sent as basic auth by the reachability probe and removed from every message (`redact_text`).

The registry and promotion live in `textrnn.registry`; run params and tags in `textrnn.provenance`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import mlflow  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from textrnn import runs, stopping  # noqa: E402
from textrnn.config import Config, Variant  # noqa: E402
from textrnn.mlflow_connection import (  # noqa: E402, F401 (TrackingError, check_reachable, tracking_uri: public here)
    TrackingError, _one_line_errors, check_reachable, connect, tracking_uri,
)
from textrnn.files import read_json, write_json  # noqa: E402
from textrnn.provenance import (  # noqa: E402
    DVC_EXP_ENV, SPLIT_CONTEXTS, config_sha256, run_tags, shared_params, split_digests, variant_params,
)
from textrnn.logged_model import download_model, log_model, pip_requirements  # noqa: E402, F401 (public here)

log = logging.getLogger("textrnn")

PARENT_RUN_ENV = "TEXTRNN_MLFLOW_PARENT_RUN_ID"
# The registry's dataset digest column holds 36 characters; the full sha256 goes in the input's tags.
DIGEST_CHARS = 32


# ------------------------------------------------------------------------------------------- runs


def recorded_run(cfg: Config, variant: str) -> dict[str, str] | None:
    """The run recorded for `variant` on the current tracking URI, or None (no file, or another server)."""
    path = cfg.paths.run_record(variant)  # written by `train`, read by the later stages
    if not path.is_file():
        return None
    record = read_json(path)
    if record.get("tracking_uri") != tracking_uri():
        return None
    return record


def close_stale_run(cfg: Config, variant: str) -> bool:
    """Mark the variant's recorded run KILLED when a dead attempt left it RUNNING (`runs.is_stale`);
    returns whether it did. Called before a stage opens the run, and by a pipeline's crash handler."""
    record = recorded_run(cfg, variant)
    if record is None or not record.get("run_id"):
        return False
    with _one_line_errors(f"{variant}: MLflow (close stale run)"):
        return runs.close_if_stale(MlflowClient(), record["run_id"])


@stopping.deferred()
def kill_orphaned_runs(parent_run_id: str, variant: str) -> list[str]:
    """Mark KILLED every RUNNING run of `variant` under pipeline run `parent_run_id`; returns their ids.

    For a pipeline whose variant flow run crashed: its worker died with the run open, on a machine whose
    disk (and run record) is gone, so nothing else would ever end it. Called before the variant is
    submitted again, so the new attempt's run is not among them.
    """
    client = MlflowClient()
    with _one_line_errors(f"{variant}: MLflow (close the crashed attempt's run)"):
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        orphans = client.search_runs(
            [experiment_id],
            filter_string=(f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.variant = '{variant}' "
                           "and attributes.status = 'RUNNING'"),
        )
        for run in orphans:
            client.set_terminated(run.info.run_id, runs.KILLED)
            log.warning("mlflow run=%s of variant=%s: its flow run crashed; marked KILLED", run.info.run_id, variant)
    return [run.info.run_id for run in orphans]


def _context_tags() -> dict[str, str]:
    """What MLflow's fluent `start_run` records about who ran what (`mlflow.user`, `mlflow.source.name`,
    `mlflow.source.type`, ...), from MLflow's own context providers: runs made with `MlflowClient.create_run`
    get none, and the UI's Source and User columns stay empty."""
    from mlflow.tracking.context.registry import resolve_tags

    return resolve_tags({})


@stopping.deferred()
def start_pipeline_run(cfg: Config, name: str | None = None, tags: dict[str, str] | None = None) -> str:
    """Create the parent run of one pipeline invocation, with extra `tags` (e.g. the orchestrator's run id),
    and return its id (finish it with `end_pipeline_run`)."""
    experiment_id = connect(cfg)
    client = MlflowClient()
    with _one_line_errors("start pipeline run"):
        run = client.create_run(
            experiment_id,
            run_name=name or f"pipeline {time.strftime('%Y-%m-%d %H:%M:%S')}",
            # The whole resolved config, as handed to every variant's flow run, by its fingerprint.
            tags={**_context_tags(), **run_tags(cfg), "run_kind": "pipeline", "variants": ",".join(cfg.variants),
                  "config_sha256": config_sha256(cfg), **(tags or {})},
        )
        _log_params(client, run.info.run_id, shared_params(cfg))
    return run.info.run_id


@stopping.deferred()
def end_pipeline_run(run_id: str, succeeded: bool | str = True) -> None:
    """Mark the parent run FINISHED (or FAILED); a status string (`runs.KILLED`, ...) is used as given."""
    status = succeeded if isinstance(succeeded, str) else (runs.FINISHED if succeeded else runs.FAILED)
    with _one_line_errors("end pipeline run"):
        MlflowClient().set_terminated(run_id, status)


def _dvc_parent_run(cfg: Config, experiment_id: str, exp_name: str) -> str:
    """The parent run of DVC experiment `exp_name`, created (already FINISHED: nobody sees the
    experiment end) by the first stage that asks."""
    client = MlflowClient()
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.run_kind = 'pipeline' AND tags.dvc_exp_name = '{exp_name}'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id, run_name=f"dvc {exp_name}", tags={**_context_tags(), **run_tags(cfg), "run_kind": "pipeline"}
    )
    _log_params(client, run.info.run_id, shared_params(cfg))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def resolve_parent(cfg: Config, experiment_id: str, parent_run_id: str | None) -> str | None:
    """The parent for a new variant run: the argument, else `TEXTRNN_MLFLOW_PARENT_RUN_ID`, else the
    DVC experiment's parent run (under `dvc exp run`), else None (a top-level run)."""
    if parent_run_id:
        return parent_run_id
    if os.environ.get(PARENT_RUN_ENV):
        return os.environ[PARENT_RUN_ENV]
    if os.environ.get(DVC_EXP_ENV):
        return _dvc_parent_run(cfg, experiment_id, os.environ[DVC_EXP_ENV])
    return None


@stopping.deferred()
def _create_variant_run(cfg: Config, variant: Variant, experiment_id: str, parent_run_id: str | None) -> str:
    """A new run for `variant` with its params and tags, recorded in `models/<V>/mlflow_run.json`."""
    client = MlflowClient()
    parent = resolve_parent(cfg, experiment_id, parent_run_id)
    tags = {**_context_tags(), **run_tags(cfg), "run_kind": "variant", "variant": variant.name}
    if parent:
        tags["mlflow.parentRunId"] = parent  # the UI nests runs by this tag
    run = client.create_run(experiment_id, run_name=variant.name, tags=tags)
    _log_params(client, run.info.run_id, variant_params(cfg, variant))
    client.set_terminated(run.info.run_id)  # each stage reopens it; between stages it is at rest
    write_json(
        cfg.paths.run_record(variant.name),
        {"run_id": run.info.run_id, "experiment_id": experiment_id, "tracking_uri": tracking_uri(),
         "parent_run_id": parent},
    )
    return run.info.run_id


@stopping.deferred()
def _log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    """Log params not yet on the run; a changed value (e.g. more epochs on --resume) is kept as it was
    and logged as a warning, since MLflow params are immutable."""
    existing = client.get_run(run_id).data.params
    new = {key: value for key, value in params.items() if key not in existing}
    changed = sorted(key for key, value in params.items() if key in existing and existing[key] != value)
    if changed:
        log.warning("mlflow run=%s keeps its first values of params %s", run_id, ", ".join(changed))
    if new:
        client.log_batch(run_id, params=[mlflow.entities.Param(key, value) for key, value in new.items()])


@contextlib.contextmanager
def variant_run(
    cfg: Config, variant: Variant, *, stage: str, parent_run_id: str | None = None, new: bool = False
) -> Iterator[str]:
    """Make the variant's run the active MLflow run for one stage; yields its run id.

    With `new` (a fresh `train`) a new run is created; otherwise the run recorded in
    `models/<V>/mlflow_run.json` is reopened, or created when there is none for this tracking URI.
    A recorded run left RUNNING by a dead attempt is marked KILLED first. The run ends FINISHED, KILLED when the stage is stopped (KeyboardInterrupt,
    `Terminated`) or FAILED when it raises (`runs.ending`); it carries this process's pid and host
    while open. Mlflow errors become one-line TrackingErrors.
    """
    experiment_id = connect(cfg)
    with _one_line_errors(f"{variant.name}: MLflow ({stage})"), runs.ending():
        # A stop signal during these writes waits for their end, inside `ending`, which ends the run KILLED.
        with stopping.deferred():
            record = None if new else recorded_run(cfg, variant.name)
            if record:
                runs.close_if_stale(MlflowClient(), record["run_id"])
            run_id = record["run_id"] if record else _create_variant_run(cfg, variant, experiment_id, parent_run_id)
            # System metrics (CPU, memory, GPU: MLflow's monitor, every 10 s) while the one long stage trains.
            mlflow.start_run(run_id=run_id, log_system_metrics=stage == "train")
            mlflow.set_tags({f"stage_{stage}": time.strftime("%Y-%m-%dT%H:%M:%S"), **runs.attempt_tags()})
        yield run_id


# ---------------------------------------------------------------------------------- stage logging


def _dataset_input(cfg: Config, split: str, digest: str) -> Any:
    """Log a prepared split as a dataset input of the active run (source = its file, digest = its sha256);
    returns the MLflow dataset."""
    import mlflow.data

    from textrnn.data import read_split

    path = cfg.paths.prepared_split(split)
    with warnings.catch_warnings():
        # A local path matches two registered source types that mean the same thing, and the int64
        # `label` column triggers a hint about missing values; neither applies to a prepared split.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        dataset = mlflow.data.from_pandas(
            read_split(cfg.paths.prepared, split),
            source=str(path.resolve()),
            targets="label",
            name=f"{cfg.data.source}-{split}",
            digest=digest[:DIGEST_CHARS],
        )
        _log_input_once_more_on_race(dataset, SPLIT_CONTEXTS[split], {"sha256": digest})
    return dataset


# What the store says when two runs create the same dataset row at once (sqlite, PostgreSQL, MySQL).
_DUPLICATE_ROW = ("UNIQUE constraint failed", "duplicate key value", "Duplicate entry", "IntegrityError")


@stopping.deferred()
def _log_input_once_more_on_race(dataset: Any, context: str, tags: dict[str, str]) -> None:
    """`mlflow.log_input`, retried once when another run inserted the same dataset concurrently.

    The tracking store checks for an existing dataset row and then inserts it, without a lock: variants
    logging the same split at the same moment (Prefect's concurrent variants, or two workers) collide on
    the unique key. The row now exists, so the second attempt links to it.
    """
    try:
        mlflow.log_input(dataset, context=context, tags=tags)
    except MlflowException as error:
        if not any(marker in str(error) for marker in _DUPLICATE_ROW):
            raise
        time.sleep(0.2)
        mlflow.log_input(dataset, context=context, tags=tags)


def log_datasets(cfg: Config, splits: Sequence[str]) -> None:
    """Log the given prepared splits as dataset inputs of the active run."""
    digests = split_digests(cfg)
    for split in splits:
        if split in digests:
            _dataset_input(cfg, split, digests[split])


def log_training_inputs(cfg: Config, variant: Variant) -> None:
    """Before training: the variant's params (a resumed run warns about changed ones), the train/val
    datasets, the tokenizer and the bucket statistics."""
    _log_params(MlflowClient(), mlflow.active_run().info.run_id, variant_params(cfg, variant))
    log_datasets(cfg, ["train", "val"])
    _log_artifact_if_exists(cfg.paths.tokenizer, "tokenizer")
    _log_artifact_if_exists(cfg.paths.buckets_report, "data")


@stopping.deferred()
def log_epoch(variant: str, metrics: dict[str, float]) -> None:
    """`train_variant`'s on_epoch callback: the epoch's metrics at step = epoch on the active run."""
    named = {"epoch_seconds" if key == "seconds" else key: float(value) for key, value in metrics.items()}
    epoch = int(named.pop("epoch"))
    mlflow.log_metrics(named, step=epoch)


@stopping.deferred()
def log_training_summary(cfg: Config, variant: str, summary: dict[str, Any]) -> None:
    """After training: best-epoch metrics, the device tag and train.json."""
    mlflow.log_metrics(
        {
            "best_val_loss": float(summary["best_val_loss"]),
            "best_val_accuracy": float(summary["best_val_accuracy"]),
            "best_epoch": float(summary["best_epoch"]),
            "epochs_run": float(summary["epochs_run"]),
            "train_wall_seconds": float(summary["wall_seconds"]),
        }
    )
    mlflow.set_tag("device", summary["device"])
    _log_artifact_if_exists(cfg.paths.train_report(variant), "metrics")


@stopping.deferred()
def log_export(report: dict[str, Any], report_file: Path) -> None:
    """The parity check's outcome: metric `onnx_parity_max_abs_diff`, tag `onnx_parity_passed`, export.json."""
    if "max_abs_diff" in report:
        mlflow.log_metric("onnx_parity_max_abs_diff", float(report["max_abs_diff"]))
    mlflow.set_tag("onnx_parity_passed", str(bool(report.get("passed"))).lower())
    _log_artifact_if_exists(report_file, "onnx")


@stopping.deferred()
def log_evaluation(cfg: Config, variant: str, report: dict[str, Any]) -> None:
    """Test metrics, the inference provider, the test dataset, eval.json and the plots."""
    metrics = {key: float(report[key]) for key in ("test_accuracy", "test_macro_f1", "inference_latency_ms_b1")
               if report.get(key) is not None}
    if report.get("provider"):
        mlflow.set_tag("onnx_provider", report["provider"])
    digest = split_digests(cfg).get("test")
    dataset = _dataset_input(cfg, "test", digest) if digest else None
    # Linked to the logged model (export's) and the test split: the model's page lists them by dataset, and
    # the registry reads a version's metrics from there (`textrnn.registry`).
    run_id = mlflow.active_run().info.run_id
    model_id = MlflowClient().get_run(run_id).data.tags.get("model_id")
    mlflow.log_metrics(metrics, model_id=model_id, dataset=dataset)
    _log_artifact_if_exists(cfg.paths.eval_report(variant), "metrics")
    for plot in (cfg.paths.confusion_matrix_plot(variant), cfg.paths.learning_curves_plot(variant)):
        _log_artifact_if_exists(plot, "plots")


@stopping.deferred()
def _log_artifact_if_exists(path: Path, artifact_dir: str) -> None:
    if Path(path).is_file():
        mlflow.log_artifact(str(path), artifact_dir)
    else:
        log.warning("mlflow artifact missing path=%s", path)
