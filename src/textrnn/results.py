"""A variant's row in the pipeline's comparison, read back from where its steps recorded it.

Tracked, the row comes from MLflow, so it crosses machines the way the model does: the worker that ran the
variant leaves one tag on the pipeline's parent run, `textrnn.result.<variant>`, naming the variant's run,
its registered version and where it ran (`announce`); the pipeline, once every variant is done, reads
those tags and builds each row from the named run's metrics and tags (`collect`). Nothing goes through
Prefect's result storage or a shared disk. Untracked (one machine by definition), the row comes from the
variant's report files (train.json, eval.json).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

from textrnn import stopping
from textrnn.config import Config
from textrnn.files import read_json

RESULT_TAG_PREFIX = "textrnn.result."


def attribution(variant: str, *, train_cached: bool, mlflow_run_id: str | None,
                model_version: str | None) -> dict[str, Any]:
    """Who ran `variant` and what it left: run, version, worker, host and pid."""
    return {
        "variant": variant,
        "train_cached": train_cached,
        "mlflow_run_id": mlflow_run_id,
        "model_version": model_version,
        "worker": os.environ.get("PREFECT__WORKER_NAME") or "local",  # a local fan-out runs no worker
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def announce(parent_run_id: str, attributed: dict[str, Any]) -> None:
    """Tag the pipeline's parent run with the variant's attribution (called on the worker, once the
    variant is registered)."""
    from mlflow.tracking import MlflowClient

    with stopping.deferred():
        MlflowClient().set_tag(parent_run_id, RESULT_TAG_PREFIX + attributed["variant"], json.dumps(attributed))


def log_summary(parent_run_id: str, rows: list[dict[str, Any]]) -> None:
    """The comparison as metrics of the pipeline's parent run, so the MLflow UI's run list and charts show
    something for it: `test_accuracy/<variant>` (and macro-F1) per variant and the best test accuracy; and
    as its description, a table linking each variant's run (`comparison_note`)."""
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    now = int(time.time() * 1000)
    metrics = [Metric(f"{key}/{row['variant']}", float(row[key]), now, 0)
               for row in rows for key in ("test_accuracy", "test_macro_f1") if row.get(key) is not None]
    scored = [row["test_accuracy"] for row in rows if row.get("test_accuracy") is not None]
    if scored:
        metrics.append(Metric("best_test_accuracy", float(max(scored)), now, 0))
    client = MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    with stopping.deferred():
        client.log_batch(parent_run_id, metrics=metrics,
                         tags=[RunTag(NOTE_TAG, comparison_note(rows, experiment_id))])


# The run's Description in the MLflow UI (markdown).
NOTE_TAG = "mlflow.note.content"


def comparison_note(rows: list[dict[str, Any]], experiment_id: str) -> str:
    """The comparison as the parent run's description, linking every variant's run. A variant served from
    the cache keeps the run (and parent) that trained it, so this is where one pipeline run holds all."""
    lines = ["| variant | test accuracy | macro-F1 | MLflow run | model version | training |", "|---|---:|---:|---|---:|---|"]
    for row in sorted(rows, key=lambda r: -(r.get("test_accuracy") or 0.0)):
        run_id = row.get("mlflow_run_id")
        link = f"[{run_id[:8]}](#/experiments/{experiment_id}/runs/{run_id})" if run_id else "-"
        numbers = [f"{row[key]:.4f}" if row.get(key) is not None else "-" for key in ("test_accuracy", "test_macro_f1")]
        training = "cached: the run of an earlier pipeline" if row.get("train_cached") else "trained in this run"
        lines.append(f"| {row['variant']} | {numbers[0]} | {numbers[1]} | {link} | {row.get('model_version') or '-'} "
                     f"| {training} |")
    return "\n".join(lines) + "\n"


def _epoch_mean(client: Any, run_id: str, key: str) -> float | None:
    """The mean over epochs of a per-epoch metric (each epoch's last value), as train.json's summary has it."""
    by_epoch = {metric.step: metric.value for metric in sorted(client.get_metric_history(run_id, key),
                                                                 key=lambda metric: metric.timestamp)}
    return sum(by_epoch.values()) / len(by_epoch) if by_epoch else None


def _tracked_row(client: Any, uri: str, attributed: dict[str, Any]) -> dict[str, Any]:
    run = client.get_run(attributed["mlflow_run_id"])
    metrics, tags = run.data.metrics, run.data.tags
    url = (f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
           if uri.startswith(("http://", "https://")) else None)
    return {
        **attributed,
        "test_accuracy": metrics.get("test_accuracy"),
        "test_macro_f1": metrics.get("test_macro_f1"),
        "inference_latency_ms_b1": metrics.get("inference_latency_ms_b1"),
        "padding_efficiency": _epoch_mean(client, run.info.run_id, "padding_efficiency"),
        "epochs_run": int(metrics["epochs_run"]) if "epochs_run" in metrics else None,
        "provider": tags.get("onnx_provider"),
        "device": tags.get("device"),
        "mlflow_run_url": url,
    }


def announced_rows(parent_run_id: str, tracking_uri: str | None = None) -> dict[str, dict[str, Any]]:
    """{variant: row} for every variant announced on pipeline run `parent_run_id`, read from MLflow (at
    `tracking_uri`, default: the current one) alone."""
    from mlflow.tracking import MlflowClient

    from textrnn.mlflow_connection import tracking_uri as current_uri

    uri = tracking_uri or current_uri()
    client = MlflowClient(uri)
    tags = client.get_run(parent_run_id).data.tags
    return {key.removeprefix(RESULT_TAG_PREFIX): _tracked_row(client, uri, json.loads(value))
            for key, value in sorted(tags.items()) if key.startswith(RESULT_TAG_PREFIX)}


def _local_row(cfg: Config, attributed: dict[str, Any]) -> dict[str, Any]:
    evaluation = read_json(cfg.paths.eval_report(attributed["variant"]))
    trained = read_json(cfg.paths.train_report(attributed["variant"]))
    return {
        **attributed,
        **{key: evaluation.get(key) for key in ("test_accuracy", "test_macro_f1", "inference_latency_ms_b1",
                                                "provider")},
        **{key: trained.get(key) for key in ("padding_efficiency", "epochs_run", "device")},
        "mlflow_run_url": None,
    }


def collect(cfg: Config, attributions: dict[str, dict[str, Any]], variants: Sequence[str],
            parent_run_id: str | None) -> list[dict[str, Any]]:
    """The rows of `variants`, in order. Tracked: each variant's attribution is the one its worker
    announced on `parent_run_id` (MLflow); untracked: the one handed back in this process
    (`attributions`), and the metrics come from the variant's report files."""
    if not cfg.tracking.enabled or parent_run_id is None:
        return [_local_row(cfg, attributions[name]) for name in variants]
    announced = announced_rows(parent_run_id)
    return [announced[name] for name in variants]
