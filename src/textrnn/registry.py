"""The MLflow model registry: a variant's logged model registered as a version, and gated promotion of
the `champion` alias (aliases only, never stages).

Register checks that the run's logged params are the config `model.pt` was trained with and that its
logged model came from the current `model.onnx`, then tags the version with its variant, parity outcome,
run id and data fingerprint; its metrics stay numbers on the logged model, linked to the test dataset
(`version_metrics`). Promote reads both (`textrnn.promotion.decide_promotion`),
moves the alias when the gate passes, and records every decision as version tags (`promotion_decision`,
`promotion_reason`) and as the registered model's `last_promotion` tag (JSON).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from textrnn import stopping
from textrnn.promotion import candidate, decide_promotion
from textrnn.provenance import flatten
from textrnn.mlflow_connection import TrackingError, _one_line_errors, connect, redacted_uri, tracking_uri
from textrnn.tracking import recorded_run

if TYPE_CHECKING:
    from textrnn.config import Config

log = logging.getLogger("textrnn")

CHAMPION = "champion"
# Run metrics copied onto each registry version, so promotion and the registry UI need no run lookups.
VERSION_METRICS = ("test_accuracy", "test_macro_f1", "onnx_parity_max_abs_diff", "inference_latency_ms_b1")


def check_run_matches(run: Any, variant: str, trained_config: dict[str, Any] | None, onnx_sha256: str | None) -> None:
    """Raise LineageError unless the run's params hold `trained_config` (model.pt's recorded training
    config) with the same values, and its logged model was made from the graph with `onnx_sha256`."""
    from textrnn.lineage import LineageError

    run_id = run.info.run_id
    if trained_config is not None:
        params = run.data.params
        differ = sorted(key for key, value in flatten(trained_config).items() if params.get(key) != value)
        if differ:
            raise LineageError(
                f"{variant}: model.pt was trained with other values than MLflow run {run_id} logs "
                f"({', '.join(differ[:6])}{' ...' if len(differ) > 6 else ''}); train again with tracking on"
            )
    if onnx_sha256 is not None and run.data.tags.get("onnx_sha256") != onnx_sha256:
        raise LineageError(
            f"{variant}: the model logged on MLflow run {run_id} is not the current model.onnx "
            "(its onnx_sha256 tag differs); run `textrnn export` again"
        )


@stopping.deferred()  # a stop signal waits for the registry writes (textrnn.stopping)
def register_variant(cfg: Config, variant: str, trained_config: dict[str, Any] | None = None,
                     onnx_sha256: str | None = None) -> dict[str, Any]:
    """Register the variant's logged pyfunc as a version of `registry.model_name`, tagged with the
    variant, its metrics, parity outcome, run id and data fingerprint. Re-registering the same logged
    model returns the existing version instead of adding a duplicate.

    With `trained_config` / `onnx_sha256` (what `steps.register_step` verified on disk), the run must
    log exactly those params and its logged model must come from that graph (`check_run_matches`).
    Raises TrackingError when the variant has no run, no logged model (`textrnn export`) or no
    `test_accuracy` (`textrnn evaluate`); LineageError on a mismatch.
    """
    connect(cfg)
    record = recorded_run(cfg, variant)
    if record is None:
        where = redacted_uri(tracking_uri())
        raise TrackingError(f"{variant}: no MLflow run on {where} (run `textrnn train` with tracking on)")
    client = MlflowClient()
    name = cfg.registry.model_name
    with _one_line_errors(f"{variant}: register {name}"):
        run = client.get_run(record["run_id"])
        model_id = run.data.tags.get("model_id")
        if not model_id:
            raise TrackingError(f"{variant}: run {record['run_id']} has no logged model (run `textrnn export`)")
        if "test_accuracy" not in run.data.metrics:
            raise TrackingError(f"{variant}: run {record['run_id']} has no test_accuracy (run `textrnn evaluate`)")
        check_run_matches(run, variant, trained_config, onnx_sha256)
        tags = _version_tags(variant, run)
        version = _existing_version(client, name, run.info.run_id, model_id)
        if version is None:
            # MLflow prints "Successfully registered model ..." to stderr; our INFO line below says it, quietly.
            with contextlib.redirect_stderr(io.StringIO()):
                version = mlflow.register_model(f"models:/{model_id}", name, tags=tags)
        else:
            for key, value in tags.items():
                client.set_model_version_tag(name, version.version, key, value)
    log.info("registered model=%s version=%s variant=%s", name, version.version, variant)
    metrics = {key: run.data.metrics[key] for key in VERSION_METRICS if key in run.data.metrics}
    return {"model_name": name, "version": str(version.version), "variant": variant, "run_id": run.info.run_id,
            "model_id": model_id, **tags, **metrics}


def version_metrics(client: MlflowClient, version: Any) -> dict[str, float]:
    """The metrics of the logged model a registry version points to ({} when it has none). A version
    registered by an older textrnn, which copied them into tags as strings, is read from its tags."""
    # Over REST `model_id` comes back empty; the source URI names the logged model either way.
    model_id = version.model_id or (version.source or "").removeprefix("models:/")
    latest: dict[str, Any] = {}
    with contextlib.suppress(MlflowException):
        for metric in client.get_logged_model(model_id).metrics or []:
            if metric.key not in latest or metric.timestamp >= latest[metric.key].timestamp:
                latest[metric.key] = metric
    if latest:
        return {key: float(metric.value) for key, metric in latest.items()}
    tags = version.tags or {}
    return {key: float(tags[key]) for key in VERSION_METRICS if key in tags}


def _version_tags(variant: str, run: Any) -> dict[str, str]:
    """Facts about the version that are not metrics. Its metrics stay numbers, on the logged model the
    version points to (linked to the test dataset by `tracking.log_evaluation`): `version_metrics`."""
    tags = run.data.tags
    version_tags = dict(
        variant=variant,
        onnx_parity_passed=tags.get("onnx_parity_passed", "false"),
        run_id=run.info.run_id,
        data_sha256=tags.get("data_sha256", "unknown"),
        git_commit=tags.get("git_commit", "unknown"),
    )
    return version_tags


def _existing_version(client: MlflowClient, name: str, run_id: str, model_id: str) -> Any | None:
    try:
        versions = client.search_model_versions(f"name = '{name}' AND run_id = '{run_id}'")
    except MlflowException:
        return None  # no registered model yet
    # Over REST `model_id` comes back empty; the source URI names the logged model either way.
    source = f"models:/{model_id}"
    return next((v for v in versions if v.model_id == model_id or v.source == source), None)


def _latest_per_variant(versions: Sequence[Any]) -> list[Any]:
    """The newest READY version of each variant (older ones already had their chance)."""
    latest: dict[str, Any] = {}
    for version in versions:
        if version.status != "READY":
            continue
        variant = (version.tags or {}).get("variant", f"?{version.version}")
        if variant not in latest or int(version.version) > int(latest[variant].version):
            latest[variant] = version
    return list(latest.values())


def current_champion(client: MlflowClient, name: str) -> Any | None:
    """The version the `champion` alias points to, or None when the alias is not set."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


@stopping.deferred()
def promote(cfg: Config, versions: Sequence[str] | None = None) -> dict[str, Any]:
    """Move alias `champion` of `registry.model_name` to the best candidate if it passes the gates.

    Candidates are `versions` when given, else the newest version of each variant. The decision
    (see `decide_promotion`) is applied (alias set, never stages), recorded as tags on the candidate
    version and as the registered model's `last_promotion` tag, and returned with `model_name` and
    `champion_after`. Raises TrackingError when the model or a named version does not exist.
    """
    connect(cfg)
    client = MlflowClient()
    name = cfg.registry.model_name
    with _one_line_errors(f"promote {name}"):
        if versions:
            chosen = [client.get_model_version(name, str(version)) for version in versions]
        else:
            chosen = _latest_per_variant(client.search_model_versions(f"name = '{name}'"))
        champion_version = current_champion(client, name)
        champion = (candidate(champion_version, version_metrics(client, champion_version))
                    if champion_version is not None else None)
        decision = decide_promotion([candidate(v, version_metrics(client, v)) for v in chosen], champion,
                                    cfg.registry.min_delta)
        if decision["promoted"]:
            client.set_registered_model_alias(name, CHAMPION, decision["version"])
        _record_decision(client, name, decision)
        after = current_champion(client, name)
    decision.update(model_name=name, champion_after=str(after.version) if after is not None else None)
    log.info("promotion model=%s promoted=%s reason=%s", name, decision["promoted"], decision["reason"])
    return decision


def _record_decision(client: MlflowClient, name: str, decision: dict[str, Any]) -> None:
    """Tags: the candidate version's `promotion_decision`/`promotion_reason`, the model's `last_promotion`."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    if decision["version"] is not None:
        outcome = "promoted" if decision["promoted"] else "rejected"
        client.set_model_version_tag(name, decision["version"], "promotion_decision", f"{outcome} {stamp}")
        client.set_model_version_tag(name, decision["version"], "promotion_reason", decision["reason"])
    for rejected in decision["rejected"]:
        client.set_model_version_tag(name, rejected["version"], "promotion_decision", f"rejected {stamp}")
        client.set_model_version_tag(name, rejected["version"], "promotion_reason", rejected["reason"])
    summary = {key: decision[key] for key in ("promoted", "version", "variant", "reason")}
    client.set_registered_model_tag(name, "last_promotion", json.dumps({**summary, "at": stamp})[:4900])
