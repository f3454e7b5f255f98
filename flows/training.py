"""The training pipeline as Prefect flows: prepare → encode → per variant (train → export → evaluate →
register, concurrently) → promote, with an MLflow parent run and a comparison artifact.

`orchestration.mode` picks where the variants run:
- `local`: each variant's `train-variant` flow runs as a subflow in this process, at most
  `orchestration.max_concurrency` at once (a thread pool);
- `distributed`: each variant is its own flow run of the `train-variant` deployment on work pool
  `orchestration.work_pool`, so N workers train N variants at once. A variant flow run needs nothing
  from this machine's disk: it prepares its data from the same config (a cache hit where the data
  already exist), logs to MLflow, and registers its model; promotion then works from the registry.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.deployments import run_deployment
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from flows import tasks
from flows.resilience import ensure_zombie_automation
from flows.report import COMPARISON_KEY, comparison_markdown
from flows.tasks import prepare_options, run_step
from textrnn import config as config_module
from textrnn import steps
from textrnn.config import Config
from textrnn.errors import TextrnnError

TRAIN_VARIANT_DEPLOYMENT = "train-variant/train-variant"
# A variant whose flow run crashed (its worker or machine died; see flows.resilience) is submitted again.
CRASH_RESUBMISSIONS = 2
# How parameters name config overrides: a mapping {"dotted.key": value} or a list of "dotted.key=value".
Overrides = dict[str, Any] | list[str] | None


class PipelineError(TextrnnError):
    """A variant failed, or the pipeline cannot run as configured; stated in one line."""


def check_prefect_api(timeout_s: float = 5.0) -> None:
    """Raise PipelineError (one line) when a Prefect API is configured (PREFECT_API_URL, in the
    environment or the active profile) but nothing answers its /health within `timeout_s`.

    Unconfigured, Prefect starts a temporary local server instead, which needs no network.
    """
    from prefect.settings import get_current_settings

    url = (get_current_settings().api.url or "").strip()
    if not url:
        return
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return  # something answered (a proxy's 401 or 404 still proves the host is there)
    except (urllib.error.URLError, OSError) as error:
        raise PipelineError(
            f"Prefect API {url} is unreachable ({getattr(error, 'reason', error)}); start it (`make prefect-server`) "
            "or unset PREFECT_API_URL to run on a temporary local server"
        ) from None


def override_list(overrides: Overrides) -> list[str]:
    """`overrides` as `dotted.key=value` strings; mapping values are written as JSON (valid YAML)."""
    if overrides is None:
        return []
    if isinstance(overrides, dict):
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    return list(overrides)


def load_config(params: str, overrides: Overrides) -> Config:
    return config_module.load(params, override_list(overrides))


def selected_variants(cfg: Config, variants: list[str] | None) -> list[str]:
    """The variants to train: `variants` in order (each must be configured), else all configured ones."""
    names = list(variants) if variants else list(cfg.variants)
    for name in names:
        cfg.variant(name)  # ConfigError naming the known variants
    return names


# ------------------------------------------------------------------------------------ one variant


@contextlib.contextmanager
def gpu_slot() -> Iterator[None]:
    """Hold a slot of global concurrency limit `gpu:<worker name>` while the block runs.

    Only on a worker (which names itself to its flow runs): `prefect gcl create gpu:<worker> --limit 1`
    makes runs on that worker's GPU take turns, however many the worker accepts. Without the limit
    Prefect logs a warning and runs on; in-process runs (local mode) take no slot.
    """
    worker = os.environ.get("PREFECT__WORKER_NAME")
    if not worker:
        yield
        return
    with concurrency(f"gpu:{worker}", occupy=1):
        yield


def mlflow_run_url(cfg: Config, variant: str) -> str | None:
    """The variant run's page on an http(s) tracking server (None for a local store or without tracking)."""
    if not cfg.tracking.enabled:
        return None
    from textrnn.tracking import recorded_run

    record = recorded_run(cfg, variant)
    if record is None or not record["tracking_uri"].startswith(("http://", "https://")):
        return None
    return f"{record['tracking_uri'].rstrip('/')}/#/experiments/{record['experiment_id']}/runs/{record['run_id']}"


def variant_row(cfg: Config, variant: str, trained: Any, evaluation: dict[str, Any],
                registration: dict[str, Any]) -> dict[str, Any]:
    """The variant's line in the comparison: metrics, MLflow run and version, where it ran, and whether
    training was a cache hit (`trained` is the train task's final state)."""
    summary = trained.result()
    return {
        "variant": variant,
        "test_accuracy": evaluation["test_accuracy"],
        "test_macro_f1": evaluation["test_macro_f1"],
        "inference_latency_ms_b1": evaluation["inference_latency_ms_b1"],
        "provider": evaluation.get("provider"),
        "padding_efficiency": summary["padding_efficiency"],
        "epochs_run": summary["epochs_run"],
        "train_cached": trained.name == "Cached",
        "mlflow_run_id": summary.get("mlflow_run_id"),
        "mlflow_run_url": mlflow_run_url(cfg, variant),
        "model_version": registration.get("version"),
        "device": summary["device"],
        "worker": os.environ.get("PREFECT__WORKER_NAME") or "in-process",
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


@flow(name="train-variant", flow_run_name="train-{variant}", persist_result=True, result_serializer="json")
def train_variant_flow(
    variant: str,
    params: str = "params.yaml",
    overrides: Overrides = None,
    parent_run_id: str | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Train, export, evaluate and register one variant; returns its comparison row (see `variant_row`).

    Self-sufficient on any machine: the data are prepared and encoded from the same config first (cache
    hits where they already exist). Training, export and evaluation hold this worker's GPU slot.
    `parent_run_id` nests the variant's MLflow run under the pipeline's run.
    """
    cfg = load_config(params, overrides)
    cfg.variant(variant)
    run_step(tasks.prepare, cfg, task_options=prepare_options(cfg))
    run_step(tasks.encode, cfg)
    with gpu_slot():
        trained = run_step(tasks.train, cfg, variant, parent_run_id=parent_run_id)
        run_step(tasks.export, cfg, variant)
        evaluation = run_step(tasks.evaluate, cfg, variant, device).result()
    registration = tasks.register(cfg, variant)
    return variant_row(cfg, variant, trained, evaluation, registration)


# ----------------------------------------------------------------------------------- the fan-out


@task(name="variant", task_run_name="variant-{variant}", cache_policy=NO_CACHE)
def run_variant_here(params: str, variant: str, overrides: Overrides, parent_run_id: str | None) -> dict[str, Any]:
    """Run the variant's flow in this process (a subflow run); returns its row."""
    return train_variant_flow(params=params, variant=variant, overrides=overrides, parent_run_id=parent_run_id)


@task(name="variant-on-worker", task_run_name="variant-{variant}", cache_policy=NO_CACHE)
def run_variant_on_worker(params: str, variant: str, overrides: Overrides, parent_run_id: str | None) -> dict[str, Any]:
    """Run the variant as a flow run of the `train-variant` deployment and wait for it; returns its row.

    The row comes back through the flow run's persisted result: with workers on several machines, point
    Prefect's default result storage at shared object storage (PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK).
    A flow run that ends Crashed (its infrastructure died) is submitted again, up to CRASH_RESUBMISSIONS
    times, for whichever worker is free, after its MLflow run (left RUNNING by the dead worker) is marked
    KILLED; a Failed one (the variant's own error) is not submitted again.
    """
    for attempt in range(CRASH_RESUBMISSIONS + 1):
        flow_run = run_deployment(
            TRAIN_VARIANT_DEPLOYMENT,
            parameters={"params": params, "variant": variant, "overrides": overrides, "parent_run_id": parent_run_id},
            timeout=None,  # wait as long as training takes
        )
        state = flow_run.state
        if state is not None and state.is_crashed() and parent_run_id is not None:
            from textrnn.tracking import kill_orphaned_runs

            kill_orphaned_runs(parent_run_id, variant)  # the dead worker can never end its MLflow run
        if state is None or not state.is_crashed() or attempt == CRASH_RESUBMISSIONS:
            break
        get_run_logger().warning("%s: flow run '%s' crashed (%s); submitting it again", variant, flow_run.name,
                                 state.message)
    if state is None or not state.is_completed():
        name = state.name if state is not None else "unknown"
        message = state.message if state is not None else ""
        raise PipelineError(f"{variant}: flow run '{flow_run.name}' ended {name}: {message}")
    return state.result()


def check_deployment(cfg: Config) -> None:
    """Raise PipelineError unless `train-variant` is deployed on `orchestration.work_pool` (distributed mode)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(TRAIN_VARIANT_DEPLOYMENT)
        except ObjectNotFound:
            raise PipelineError(
                f"orchestration.mode distributed: deployment '{TRAIN_VARIANT_DEPLOYMENT}' not found "
                "(run `make deploy` against this Prefect server)"
            ) from None
    if deployment.work_pool_name != cfg.orchestration.work_pool:
        raise PipelineError(
            f"deployment '{TRAIN_VARIANT_DEPLOYMENT}' runs on work pool '{deployment.work_pool_name}', but "
            f"orchestration.work_pool is '{cfg.orchestration.work_pool}'"
        )


def fan_out(cfg: Config, params: str, names: list[str], overrides: Overrides,
            parent_run_id: str | None) -> tuple[list[dict[str, Any]], list[str]]:
    """Run every variant's flow, concurrently; returns (rows of the variants that completed, failures).

    Local: at most `orchestration.max_concurrency` at once. Distributed: all flow runs are submitted
    at once; the work pool's workers (and their GPU limits) decide how many run together.
    """
    distributed = cfg.orchestration.mode == "distributed"
    run_variant = run_variant_on_worker if distributed else run_variant_here
    width = len(names) if distributed else cfg.orchestration.max_concurrency
    with ThreadPoolTaskRunner(max_workers=width) as runner:
        futures: dict[str, PrefectFuture] = {
            name: runner.submit(run_variant, {"params": params, "variant": name, "overrides": overrides,
                                              "parent_run_id": parent_run_id})
            for name in names
        }
        for future in futures.values():
            future.wait()
    rows, failures = [], []
    for name, future in futures.items():
        if future.state.is_completed():
            rows.append(future.result())
        else:
            failures.append(f"{name}: {future.state.message}")
    return rows, failures


# --------------------------------------------------------------------------------- the pipeline


def parent_run_name() -> str:
    """`pipeline <UTC date time> <commit>`: which code ran when, at a glance in the MLflow UI."""
    from textrnn.provenance import git_tags

    commit = git_tags()["git_commit"][:8]
    return f"pipeline {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC {commit}"


def publish_comparison(rows: list[dict[str, Any]], promotion: dict[str, Any], failures: list[str]) -> None:
    create_markdown_artifact(
        comparison_markdown(rows, promotion, failures),
        key=COMPARISON_KEY,
        description="Test metrics, ONNX latency, padding efficiency and MLflow runs of each variant; the champion.",
    )


@flow(name="training-pipeline")
def training_pipeline(
    params: str = "params.yaml",
    variants: list[str] | None = None,
    overrides: Overrides = None,
) -> dict[str, Any]:
    """Prepare and encode the data, train/export/evaluate/register every variant concurrently, then
    move the `champion` alias if the best new version passes the promotion gates.

    `variants`: names from `params.yaml` (default: all); `overrides`: `{"dotted.key": value}` or
    `["dotted.key=value"]`, as `--set`. Returns {variants: rows, promotion, mlflow_parent_run_id}. Raises
    the step's own error when prepare or encode fails, and PipelineError naming every failed variant
    (after the others finish; nothing is promoted then).
    """
    logger = get_run_logger()
    cfg = load_config(params, overrides)
    names = selected_variants(cfg, variants)
    if cfg.orchestration.mode == "distributed":
        if not cfg.tracking.enabled:
            raise PipelineError("orchestration.mode distributed moves models through MLflow: set tracking.enabled=true")
        check_deployment(cfg)
        ensure_zombie_automation()  # crashed variant runs are detected, then resubmitted
    run_step(tasks.prepare, cfg, task_options=prepare_options(cfg))
    run_step(tasks.encode, cfg)
    with steps.pipeline_run(cfg, parent_run_name() if cfg.tracking.enabled else None) as parent_run_id:
        rows, failures = fan_out(cfg, params, names, overrides, parent_run_id)
        if failures:
            promotion = {"promoted": False, "reason": "skipped: some variants failed"}
        else:
            versions = [row["model_version"] for row in rows if row.get("model_version")]
            promotion = tasks.promote(cfg, versions or None)
        publish_comparison(rows, promotion, failures)
        if failures:
            raise PipelineError(f"{len(failures)} of {len(names)} variants failed: " + "; ".join(failures))
    logger.info("promotion: %s", promotion["reason"])
    return {"variants": rows, "promotion": promotion, "mlflow_parent_run_id": parent_run_id}
