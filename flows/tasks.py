"""One Prefect task per pipeline step, each a call to the matching `textrnn.steps` function.

File-producing steps (prepare, encode, train, export, evaluate) are cached on `flows.caching` keys with
JSON results persisted under the workspace, so an unchanged step is skipped on the next run. The
registry steps (register, promote) are never cached: their answer depends on the registry's state
now, and both are idempotent. They retry with backoff, as the MLflow server may be briefly away.
Call the cached tasks through `run_step`, which points them at the workspace's result storage. Each task
run is named by its step and variant (`train-gru`) and tagged `stage:<step>` (see `flows.labels`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.states import State
from prefect.tasks import exponential_backoff

from flows.caching import outputs_from, record_outputs, result_storage, stamp_file, step_cache_key, step_files
from flows.labels import stage_tag
from textrnn import steps
from textrnn.config import Config

# 10 s, 20 s, 40 s (+ jitter): long enough to ride out a server restart, short enough to fail the same hour.
OUTSIDE_WORLD_RETRIES = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=10),
                         "retry_jitter_factor": 0.5}
# Cached on `flows.caching` keys, with JSON results persisted under the workspace.
CACHED = {"persist_result": True, "result_serializer": "json", "cache_key_fn": step_cache_key}


@task(name="prepare", task_run_name="prepare", tags=[stage_tag("prepare")], **CACHED)
def prepare(cfg: Config) -> dict[str, Any]:
    """Load, validate and split the source (`data/prepared/`); returns report.json's content."""
    return steps.prepare_step(cfg)


@task(name="encode", task_run_name="encode", tags=[stage_tag("encode")], **CACHED)
def encode(cfg: Config) -> dict[str, Any]:
    """Fit the tokenizer on train and encode every split; returns the bucket report."""
    return steps.encode_step(cfg)


@task(name="train", task_run_name="train-{variant}", tags=[stage_tag("train")], **CACHED)
def train(cfg: Config, variant: str, parent_run_id: str | None = None) -> dict[str, Any]:
    """Train one variant; returns train.json's summary (+ `mlflow_run_id` when tracked).

    `parent_run_id` is not part of the cache key: a cached model keeps the MLflow run it was trained in.
    """
    return steps.train_step(cfg, variant, parent_run_id=parent_run_id)


@task(name="export", task_run_name="export-{variant}", tags=[stage_tag("export")], **CACHED)
def export(cfg: Config, variant: str) -> dict[str, Any]:
    """Export one variant to ONNX with its parity check; returns export.json's content."""
    return steps.export_step(cfg, variant)


@task(name="evaluate", task_run_name="evaluate-{variant}", tags=[stage_tag("evaluate")], **CACHED)
def evaluate(cfg: Config, variant: str, device: str = "auto") -> dict[str, Any]:
    """Evaluate the exported variant on the test split; returns eval.json's content."""
    return steps.evaluate_step(cfg, variant, device=device)


@task(name="register", task_run_name="register-{variant}", tags=[stage_tag("register")], cache_policy=NO_CACHE,
      **OUTSIDE_WORLD_RETRIES)
def register(cfg: Config, variant: str) -> dict[str, Any]:
    """Register the variant's logged model in the MLflow registry (idempotent for the same model)."""
    return steps.register_step(cfg, variant)


@task(name="promote", task_run_name="promote", tags=[stage_tag("promote")], cache_policy=NO_CACHE,
      **OUTSIDE_WORLD_RETRIES)
def promote(cfg: Config, versions: Sequence[str] | None = None) -> dict[str, Any]:
    """Move alias `champion` to the best of `versions` if it passes the gates; returns the decision."""
    return steps.promote_step(cfg, versions)


def run_step(step: Task, cfg: Config, *args: Any, task_options: dict[str, Any] | None = None, **kwargs: Any) -> State:
    """Run a cached step task on (`cfg`, *args, **kwargs) and return its final state; raise if it failed.

    `args` are what the step's cache key reads (e.g. the variant); `kwargs` are not (e.g. the MLflow
    parent run). Results go to the workspace's result storage. A cached result is used only while the
    step's outputs on disk are the ones its key produced (see `flows.caching`); otherwise the step
    runs and overwrites its cache record. `task_options` go to `Task.with_options` (e.g. retries).
    """
    files = step_files(cfg, step.name, *args)
    key = files.key(step.name)
    stamp = stamp_file(cfg, "-".join([step.name, *map(str, args)]))
    configured = step.with_options(
        # The key just computed: the task's own cache_key_fn would hash the same inputs a second time.
        cache_key_fn=lambda *_: key, result_storage=result_storage(cfg),
        refresh_cache=not outputs_from(stamp, key, files), **(task_options or {}),
    )
    state = configured(cfg, *args, **kwargs, return_state=True)
    state.result()  # raises the step's own exception when it failed
    record_outputs(stamp, key, files)
    return state


def prepare_options(cfg: Config) -> dict[str, Any]:
    """Retries for `prepare` only when it downloads (a bad local file fails the same way every time)."""
    return OUTSIDE_WORLD_RETRIES if cfg.data.source == "hf" else {}
