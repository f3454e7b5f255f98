"""The pipeline of `textrnn.pipeline` as Prefect flows: its steps run as cached tasks (`PrefectSteps`),
each variant as a `train-variant` flow run, with an MLflow parent run and a comparison artifact.

`orchestration.mode` picks where the variants run:
- `local`: each variant's `train-variant` flow runs as a subflow of this process, at most
  `orchestration.max_concurrency` at once;
- `distributed`: each variant is its own flow run of the `train-variant` deployment on work pool
  `orchestration.work_pool`, so N workers train N variants at once.

The pipeline flow resolves the config once and hands every variant flow run the validated config as data
(`config`), with the commit of the code that resolved it: a worker never reads its own params.yaml, and
one whose checkout is at another commit refuses (unless `allow_other_commit`). A variant flow run needs
nothing from this machine's disk: it prepares its data from that config (a cache hit where they already
exist), logs to MLflow and registers its model; its row comes back through MLflow (`textrnn.results`),
so no Prefect result storage is shared between machines.

Each flow's body writes textrnn's own log lines into its Prefect runs (`flows.logs`); runs are named and
tagged as `flows.labels` describes.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

from prefect import flow, get_run_logger, tags, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.deployments import run_deployment
from prefect.futures import PrefectFuture
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from flows import tasks
from flows.labels import (
    TEXTRNN_TAG,
    VARIANT_STAGE,
    pipeline_run_name,
    stage_tag,
    tag_flow_run,
    variant_run_tags,
    variant_tag,
)
from flows.logs import textrnn_logs_in_prefect
from flows.resilience import ensure_zombie_automation
from flows.report import COMPARISON_KEY, comparison_markdown
from flows.tasks import prepare_options, run_step
from textrnn import config as config_module
from textrnn import pipeline
from textrnn.config import DEFAULT_PARAMS, Config
from textrnn.pipeline import PipelineError
from textrnn.provenance import git_tags

TRAIN_VARIANT_DEPLOYMENT = "train-variant/train-variant"
# A variant whose flow run crashed (its worker or machine died; see flows.resilience) is submitted again.
CRASH_RESUBMISSIONS = 2
# How parameters name config overrides: a mapping {"dotted.key": value} or a list of "dotted.key=value".
Overrides = dict[str, Any] | list[str] | None


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


def check_commit(expected: str | None, allow_other_commit: bool) -> None:
    """Refuse (one line) to run a pipeline's variant with code from another commit than the pipeline's:
    the run would record one commit and train with another's code."""
    if expected is None or allow_other_commit:
        return
    here = git_tags()["git_commit"]
    if here != expected:
        raise PipelineError(
            f"this worker's checkout ({os.getcwd()}) is at commit {here[:12]}, the pipeline's at {expected[:12]}: "
            "check out the same commit here, or run the pipeline with allow_other_commit=true"
        )


# ------------------------------------------------------------------------------------ the steps


@contextlib.contextmanager
def gpu_slot() -> Iterator[None]:
    """Hold a slot of global concurrency limit `gpu:<worker name>` while the block runs.

    Only on a worker (which names itself to its flow runs): `prefect gcl create gpu:<worker> --limit 1`
    makes runs on that worker's GPU take turns, however many the worker accepts. Without the limit
    Prefect logs a warning and runs on; local variant processes take no slot.
    """
    worker = os.environ.get("PREFECT__WORKER_NAME")
    if not worker:
        yield
        return
    with concurrency(f"gpu:{worker}", occupy=1):
        yield


class PrefectSteps:
    """`textrnn.pipeline.Steps` as Prefect tasks: file-producing steps cached (`flows.tasks.run_step`),
    registry steps retried; evaluation on `device`."""

    def __init__(self, device: str = "auto") -> None:
        self.device = device

    def prepare(self, cfg: Config) -> Any:
        return run_step(tasks.prepare, cfg, task_options=prepare_options(cfg)).result()

    def encode(self, cfg: Config) -> Any:
        return run_step(tasks.encode, cfg).result()

    def train(self, cfg: Config, variant: str, parent_run_id: str | None) -> tuple[dict[str, Any], bool]:
        trained = run_step(tasks.train, cfg, variant, parent_run_id=parent_run_id)
        return trained.result(), trained.name == "Cached"

    def export(self, cfg: Config, variant: str) -> Any:
        return run_step(tasks.export, cfg, variant).result()

    def evaluate(self, cfg: Config, variant: str) -> Any:
        return run_step(tasks.evaluate, cfg, variant, self.device).result()

    def register(self, cfg: Config, variant: str) -> dict[str, Any]:
        return tasks.register(cfg, variant)

    def promote(self, cfg: Config, versions: Sequence[str] | None) -> dict[str, Any]:
        return tasks.promote(cfg, versions)

    def device_slot(self) -> contextlib.AbstractContextManager[None]:
        return gpu_slot()


# ------------------------------------------------------------------------------------ one variant


@flow(name="train-variant", flow_run_name="train-{variant}", persist_result=False)
def train_variant_flow(
    variant: str,
    config: dict[str, Any],
    parent_run_id: str | None = None,
    code_commit: str | None = None,
    allow_other_commit: bool = False,
    device: str = "auto",
) -> dict[str, Any]:
    """Prepare (where needed), train, export, evaluate and register one variant from the pipeline's
    resolved `config` (`Config.model_dump`); returns its attribution (`textrnn.results`).

    Refuses when this checkout is not at `code_commit` (see `check_commit`). Training, export and
    evaluation hold this worker's GPU slot. `parent_run_id` nests the variant's MLflow run under the
    pipeline's run, where the variant's result is announced.
    """
    tag_flow_run(TEXTRNN_TAG, *variant_run_tags(variant))  # a run started by hand has none of them
    with textrnn_logs_in_prefect(), tags(TEXTRNN_TAG, variant_tag(variant)):
        check_commit(code_commit, allow_other_commit)
        cfg = config_module.from_dict(config, source="the pipeline's config")
        cfg.variant(variant)
        attributed = pipeline.run_variant(cfg, variant, PrefectSteps(device), parent_run_id)
        if cfg.tracking.enabled and attributed["mlflow_run_id"] and not attributed["train_cached"]:
            link_mlflow_run(cfg, attributed["mlflow_run_id"])
        return attributed


def link_mlflow_run(cfg: Config, run_id: str) -> None:
    """Tag the variant's MLflow run with this flow run, which trained it (a cached variant's run keeps the
    flow run that made it)."""
    from textrnn import runs, tracking

    tracking.connect(cfg)
    runs.set_tags(run_id, prefect_run_tags())


# ----------------------------------------------------------------------------------- the fan-out


@task(name="variant", task_run_name="variant-{variant}", tags=[stage_tag(VARIANT_STAGE)], cache_policy=NO_CACHE)
def run_variant_here(variant: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Run the variant's flow as a subflow, in the process pool's process that runs this task; returns its
    attribution."""
    return train_variant_flow(variant=variant, **parameters)


@task(name="variant-on-worker", task_run_name="variant-{variant}", tags=[stage_tag(VARIANT_STAGE)],
      cache_policy=NO_CACHE)
def run_variant_on_worker(variant: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Run the variant as a flow run of the `train-variant` deployment and wait for it.

    Its result is not read back from Prefect (that would need result storage shared by every machine):
    the pipeline reads it from MLflow. A flow run that ends Crashed (its infrastructure died) is
    submitted again, up to CRASH_RESUBMISSIONS times, for whichever worker is free, after its MLflow run
    (left RUNNING by the dead worker) is marked KILLED; a Failed one (the variant's own error) is not.
    """
    parent_run_id = parameters.get("parent_run_id")
    for attempt in range(CRASH_RESUBMISSIONS + 1):
        flow_run = run_deployment(
            TRAIN_VARIANT_DEPLOYMENT,
            parameters={"variant": variant, **parameters},
            tags=variant_run_tags(variant),  # added to the deployment's own
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
    return {"variant": variant, "flow_run": flow_run.name}


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


def fan_out_over_prefect(allow_other_commit: bool) -> pipeline.FanOut:
    """`textrnn.pipeline.FanOut` over Prefect: every variant's flow run, concurrently.

    Local: subflows in this process, at most `orchestration.max_concurrency` at once. Distributed: all
    flow runs are submitted at once; the work pool's workers (and their GPU limits) decide how many run
    together. Each flow run gets the config as data and this checkout's commit.
    """

    def fan_out(cfg: Config, names: Sequence[str], parent_run_id: str | None):
        distributed = cfg.orchestration.mode == "distributed"
        run_variant = run_variant_on_worker if distributed else run_variant_here
        width = len(names) if distributed else cfg.orchestration.max_concurrency
        parameters = {"config": cfg.model_dump(mode="json"), "parent_run_id": parent_run_id,
                      "code_commit": git_tags()["git_commit"], "allow_other_commit": allow_other_commit}
        # Local variants run in processes of their own (torch's exporter and RNG are per process), each
        # training with `train.threads` threads (1 by default: see textrnn.config.TrainConfig).
        runner_for = (ThreadPoolTaskRunner if distributed else ProcessPoolTaskRunner)(max_workers=width)
        with runner_for as runner:
            futures: dict[str, PrefectFuture] = {}
            for name in names:
                with tags(variant_tag(name)):  # the task run, and the local variant flow run it starts
                    futures[name] = runner.submit(run_variant, {"variant": name, "parameters": parameters})
            for future in futures.values():
                future.wait()
        attributions, failures = {}, []
        for name, future in futures.items():
            if future.state.is_completed():
                attributions[name] = future.result()
            else:
                failures.append(f"{name}: {future.state.message}")
        return attributions, failures

    return fan_out


# --------------------------------------------------------------------------------- the pipeline


def parent_run_name() -> str:
    """`pipeline <UTC date time> <commit>`: which code ran when, at a glance in the MLflow UI."""
    commit = git_tags()["git_commit"][:8]
    return f"pipeline {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC {commit}"


def prefect_run_tags() -> dict[str, str]:
    """Tags that link an MLflow run to the Prefect flow run it belongs to: its id, name and page in the UI."""
    from prefect.runtime import flow_run

    tags = {"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": str(flow_run.name)}
    if flow_run.ui_url:
        tags["prefect.flow_run_url"] = str(flow_run.ui_url)
    return tags


def publish_comparison(rows: list[dict[str, Any]], promotion: dict[str, Any], failures: list[str]) -> None:
    create_markdown_artifact(
        comparison_markdown(rows, promotion, failures),
        key=COMPARISON_KEY,
        description="Test metrics, ONNX latency, padding efficiency and MLflow runs of each variant; the champion.",
    )


@flow(name="training-pipeline", flow_run_name=pipeline_run_name)
def training_pipeline(
    params: str = str(DEFAULT_PARAMS),
    variants: list[str] | None = None,
    overrides: Overrides = None,
    allow_other_commit: bool = False,
) -> dict[str, Any]:
    """`textrnn.pipeline.run` on Prefect: prepare and encode the data, train/export/evaluate/register
    every variant concurrently, then move the `champion` alias if the best new version passes the gates.

    `variants`: names from `params.yaml` (default: all); `overrides`: `{"dotted.key": value}` or
    `["dotted.key=value"]`, as `--set`; `allow_other_commit`: let workers whose checkout is at another
    commit run the variants. Returns {variants: rows, promotion, mlflow_parent_run_id}. Raises the
    step's own error when prepare or encode fails, and PipelineError naming every failed variant (after
    the others finish; nothing is promoted then).
    """
    tag_flow_run(TEXTRNN_TAG)  # a run from the CLI has none; one from the deployment has the deployment's
    with textrnn_logs_in_prefect(), tags(TEXTRNN_TAG):
        cfg = load_config(params, overrides)
        names = selected_variants(cfg, variants)
        if cfg.orchestration.mode == "distributed":
            if not cfg.tracking.enabled:
                raise PipelineError("orchestration.mode distributed moves models through MLflow: "
                                    "set tracking.enabled=true")
            check_deployment(cfg)
            ensure_zombie_automation()  # crashed variant runs are detected, then resubmitted
        result = pipeline.run(cfg, names, PrefectSteps(), fan_out_over_prefect(allow_other_commit),
                              parent_run_name=parent_run_name(), parent_run_tags=prefect_run_tags(),
                              publish=publish_comparison)
    get_run_logger().info("promotion: %s", result["promotion"]["reason"])
    return result
