"""textrnn's runs as the Prefect UI shows them, read back through the Prefect API: textrnn's own log lines in
the runs that wrote them, readable run names, and tags.

The logging bridge (flows/logs.py) and the naming rule (flows/labels.py) are first tested alone. The rest runs
on real components on loopback, as test_prefect_integration does: a module fixture starts `prefect server
start` (sqlite under tmp) and an `mlflow server`, creates work pools `cpu` and `gpu`, deploys prefect.yaml and
starts one `gpu` process worker. Against them, once each:
- local: `textrnn pipeline` as a user runs it, in a process of its own whose stdout and stderr are kept (its
  terminal); two variants, each in a process of Prefect's process pool;
- distributed: `training_pipeline` in this process with `orchestration.mode=distributed`: its variant is a
  flow run of the `train-variant` deployment, on the worker.
Every process is started in its own session and stopped by its process group, with the flow-run processes the
worker started, even when the set-up fails.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from conftest import PARAMS, REPO_ROOT, path_overrides
from flows.labels import name_for_pipeline_run
from flows.logs import textrnn_logs_in_prefect
from mlflow_server import free_port, start_tracking_server
from test_prefect_integration import (
    BIN,
    GPU_WORKERS,
    Stack,
    _client_env,
    _wait_for_http,
    _worker_args,
    copy_worker_checkout,
)
from test_scale_out import _stop_with_descendants
from textrnn.provenance import git_tags

LOCAL_VARIANTS = ["bag", "gru"]
WORKER_VARIANT = "bag"
WORKER = GPU_WORKERS[0]
EPOCHS = 2
RUN_TIMEOUT_S = 480
LOGS_TIMEOUT_S = 30  # runs end before their last log batch (sent every 2 s) is in
STEPS = ("train", "export", "evaluate", "register")
SMALL = ["data.source=sample", "data.sample.train_rows=1000", "data.sample.test_rows=200", f"train.epochs={EPOCHS}",
         "train.threads=1", "tracking.enabled=true"]
# A line textrnn writes at INFO in each step, tracked (export loads the ONNX model it logs to MLflow).
EXPECTED_LINES = {
    "train-{v}/train-{v}": "epoch variant={v} ",
    "train-{v}/export-{v}": "onnxruntime provider=",
    "train-{v}/evaluate-{v}": "onnxruntime provider=",
    "train-{v}/register-{v}": "registered model=agnews-rnn version=",
}
PIPELINE_LINES = {"pipeline/prepare": "prepared train ", "pipeline/promote": "promotion model=agnews-rnn "}


# ------------------------------------------------------------------------------------ alone


@pytest.fixture
def textrnn_logger() -> Iterator[logging.Logger]:
    """The `textrnn` logger set up as the CLI sets it up (WARNING, a stderr-like handler of its own); put back
    as it was afterwards."""
    logger = logging.getLogger("textrnn")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    logger.handlers[:] = [logging.StreamHandler(io.StringIO())]
    logger.setLevel(logging.WARNING)
    try:
        yield logger
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers[:] = saved[2]


@contextlib.contextmanager
def outside_any_run() -> Iterator[None]:
    """No run to send to here: Prefect's handler drops the lines instead of warning."""
    from prefect.settings import PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW, temporary_settings

    with temporary_settings({PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore"}):
        yield


def test_the_bridge_adds_prefects_handler_at_info_and_leaves_every_other_one_as_it_was(
    textrnn_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    from prefect.logging.handlers import APILogHandler

    (terminal,) = textrnn_logger.handlers
    with outside_any_run(), textrnn_logs_in_prefect(), textrnn_logs_in_prefect():  # nested flows share one set-up
        api = [handler for handler in textrnn_logger.handlers if isinstance(handler, APILogHandler)]
        assert len(api) == 1 and api[0].level == logging.INFO
        assert logging.getLogger("textrnn.data").isEnabledFor(logging.INFO)
        textrnn_logger.info("epoch variant=bag train_loss=1.0")
        logging.getLogger("textrnn.data").info("prepared train 10")
        textrnn_logger.warning("a warning")
    assert terminal.stream.getvalue() == "a warning\n", "the terminal still gets warnings only"
    assert [r.getMessage() for r in caplog.records if r.name.startswith("textrnn")] == ["a warning"], \
        "the root's handlers (caplog) get what propagation gave them"
    assert textrnn_logger.handlers == [terminal] and terminal.level == logging.NOTSET
    assert textrnn_logger.level == logging.WARNING and textrnn_logger.propagate


def test_caplog_at_info_still_sees_textrnns_info_lines_inside_a_flow(
    textrnn_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    with outside_any_run(), caplog.at_level(logging.INFO, logger="textrnn"), textrnn_logs_in_prefect():
        textrnn_logger.info("an info line")
    assert "an info line" in caplog.messages


def test_a_pipeline_run_is_named_by_its_start_and_commit_unless_someone_named_it() -> None:
    started = datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)
    commit = "0123456789abcdef"
    assert name_for_pipeline_run(None, [], "brave-lion", started, commit) == "pipeline-2026-01-02-0304-01234567"
    assert name_for_pipeline_run("nightly-train", ["auto-scheduled", "textrnn"], "brave-lion", started, commit) == \
        "nightly-train-2026-01-02-0304-01234567"
    assert name_for_pipeline_run("nightly-train", ["textrnn"], "it-nightly-1", started, commit) == "it-nightly-1"


# ------------------------------------------------------------------------------ real servers


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Prefect server + MLflow server + pools + prefect.yaml deployed + one gpu worker; all stopped after."""
    root = tmp_path_factory.mktemp("prefect-logs")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    with contextlib.ExitStack() as cleanup:  # every callback runs, last registered first, even if one raises
        mlflow = start_tracking_server(root / "mlflow")
        cleanup.callback(mlflow.stop)
        stack = Stack(root=root, env=_client_env(root, api_url, mlflow.url), api_url=api_url, mlflow_url=mlflow.url)
        cleanup.callback(lambda: _stop_with_descendants(stack.stop, list(stack.processes.values())))
        stack.start("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)])
        _wait_for_http(f"{api_url}/health", stack.processes["server"], 180, stack)
        for pool in ("cpu", "gpu"):
            stack.prefect("work-pool", "create", pool, "--type", "process")
        stack.prefect("gcl", "create", f"gpu:{WORKER}", "--limit", "1")
        copy_worker_checkout(_checkout(stack))
        stack.prefect("deploy", "--all", cwd=REPO_ROOT, TEXTRNN_HOME=str(_checkout(stack)))
        stack.start(WORKER, _worker_args("gpu", WORKER), CUDA_VISIBLE_DEVICES="")
        yield stack


def _checkout(stack: Stack) -> Path:
    return stack.root / "checkout"


@contextlib.contextmanager
def prefect_client(stack: Stack) -> Iterator[Any]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        yield client


@dataclass
class PipelineRuns:
    """A pipeline flow run as the Prefect API has it. Runs and lines are keyed by flow run ("pipeline" for the
    pipeline's own, the name of each variant's) and `<flow run>/<task run name>` for a task run's."""

    pipeline: Any
    flow_runs: dict[str, Any]
    task_runs: dict[str, Any]
    lines: dict[str, list[str]]

    def holding(self, text: str) -> set[str]:
        """The runs whose log has a line containing `text`."""
        return {key for key, lines in self.lines.items() if any(text in line for line in lines)}


def read_runs(client: Any, pipeline_id: Any) -> PipelineRuns:
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )

    pipeline = client.read_flow_run(pipeline_id)
    children = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[pipeline_id]))
    )
    flow_runs = {"pipeline": pipeline, **{child.name: child for child in children}}
    label = {run.id: key for key, run in flow_runs.items()}
    task_runs = {
        f"{label[run.flow_run_id]}/{run.name}": run
        for run in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(label))))
    }
    task_label = {run.id: key for key, run in task_runs.items()}
    lines: dict[str, list[str]] = {}
    log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=list(label)))
    while True:  # the server answers at most 200 at a time
        page = client.read_logs(log_filter, limit=200, offset=sum(map(len, lines.values())))
        for log in page:
            key = task_label.get(log.task_run_id, label[log.flow_run_id])
            lines.setdefault(key, []).append(log.message)
        if len(page) < 200:
            break
    return PipelineRuns(pipeline=pipeline, flow_runs=flow_runs, task_runs=task_runs, lines=lines)


def expected_lines(variants: list[str]) -> dict[str, str]:
    """{run: a text one of its lines must contain}."""
    per_variant = {key.format(v=v): text.format(v=v) for v in variants for key, text in EXPECTED_LINES.items()}
    return {**PIPELINE_LINES, **per_variant}


def wait_for_lines(client: Any, pipeline_id: Any, expected: dict[str, str]) -> PipelineRuns:
    """The runs once every expected line is in (or LOGS_TIMEOUT_S passed: the tests then say what is missing)."""
    deadline = time.monotonic() + LOGS_TIMEOUT_S
    while True:
        runs = read_runs(client, pipeline_id)
        if all(key in runs.holding(text) for key, text in expected.items()) or time.monotonic() > deadline:
            return runs
        time.sleep(1)


@dataclass
class LocalRun:
    runs: PipelineRuns
    terminal: str  # what `textrnn pipeline` printed, its process-pool processes included
    mlflow_url: str


def _pipeline_ids(client: Any) -> set[Any]:
    """The pipeline flow runs started from code (not the ones nightly-train's schedule has lined up)."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["training-pipeline"])))
    return {run.id for run in runs if run.deployment_id is None}


def _run_in_own_session(args: list[str], stack: Stack, cwd: Path, timeout_s: float) -> subprocess.CompletedProcess:
    """Run `args` to the end (or SIGKILL its whole session after `timeout_s`), keeping stdout and stderr."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=stack.env,
                               cwd=cwd, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate(timeout=30)
        raise AssertionError(f"{' '.join(args[:2])} did not finish within {timeout_s:.0f} s:\n{out}\n{err}") from None
    return subprocess.CompletedProcess(args, process.returncode, out, err)


@pytest.fixture(scope="module")
def local(stack: Stack) -> LocalRun:
    """`textrnn pipeline --variants bag,gru` against the stack's servers, in a process of its own."""
    workdir = stack.root / "local"
    workdir.mkdir()
    sets = [arg for override in [*SMALL, "orchestration.max_concurrency=2", *path_overrides(workdir)]
            for arg in ("--set", override)]
    with prefect_client(stack) as client:
        before = _pipeline_ids(client)
    answer = _run_in_own_session([str(BIN / "textrnn"), "pipeline", "--params", str(PARAMS), "--variants",
                                  ",".join(LOCAL_VARIANTS), *sets], stack, workdir, RUN_TIMEOUT_S)
    assert answer.returncode == 0, f"{answer.stdout}\n{answer.stderr}\n{stack.logs()}"
    with prefect_client(stack) as client:
        (pipeline_id,) = _pipeline_ids(client) - before
        runs = wait_for_lines(client, pipeline_id, expected_lines(LOCAL_VARIANTS))
    return LocalRun(runs=runs, terminal=answer.stdout + answer.stderr, mlflow_url=stack.mlflow_url)


@pytest.fixture(scope="module")
def distributed(stack: Stack) -> PipelineRuns:
    """`training_pipeline` in this process, distributed: its variant runs on the worker."""
    from prefect.logging.handlers import APILogWorker

    from flows.training import training_pipeline

    workdir = _checkout(stack)  # every output lies inside the worker's working directory
    overrides = [*SMALL, "orchestration.mode=distributed", *path_overrides(workdir)]
    bounded = training_pipeline.with_options(timeout_seconds=RUN_TIMEOUT_S)
    with pytest.MonkeyPatch.context() as patch, prefect_client(stack) as client:
        patch.chdir(workdir)
        patch.setenv("MLFLOW_TRACKING_URI", stack.mlflow_url)
        state = bounded(params=str(PARAMS), variants=[WORKER_VARIANT], overrides=overrides, return_state=True)
        APILogWorker.drain_all(timeout=10)  # this process's last lines, while the server is up
        assert state.is_completed(), f"{state}:\n{stack.logs(80)}"
        return wait_for_lines(client, state.state_details.flow_run_id, expected_lines([WORKER_VARIANT]))


def _assert_lines(runs: PipelineRuns, variants: list[str]) -> None:
    for key, text in expected_lines(variants).items():
        assert key in runs.holding(text), f"no '{text}' in {key}: {runs.lines.get(key)}"
    for variant in variants:
        epochs = [line for line in runs.lines[f"train-{variant}/train-{variant}"] if line.startswith("epoch ")]
        assert len(epochs) == EPOCHS, epochs
        assert all(re.search(r"train_loss=\S+ .*val_accuracy=\S+", line) for line in epochs), epochs
        # Each line in the run that wrote it, and nowhere else.
        assert runs.holding(f"epoch variant={variant} ") == {f"train-{variant}/train-{variant}"}


def _assert_variant_tags(runs: PipelineRuns, variant: str) -> None:
    flow_run = runs.flow_runs[f"train-{variant}"]
    assert {"textrnn", f"variant:{variant}", "stage:train-variant"} <= set(flow_run.tags), flow_run.tags
    for step in (*STEPS, "prepare", "encode"):
        name = f"{step}-{variant}" if step in STEPS else step
        tags = runs.task_runs[f"train-{variant}/{name}"].tags
        assert {f"variant:{variant}", f"stage:{step}"} <= set(tags), (name, tags)
        assert [tag for tag in tags if tag.startswith("stage:")] == [f"stage:{step}"], (name, tags)
    waiting = runs.task_runs[f"pipeline/variant-{variant}"].tags
    assert {f"variant:{variant}", "stage:train-variant"} <= set(waiting), waiting


def _assert_pipeline_labels(runs: PipelineRuns) -> None:
    commit = git_tags()["git_commit"][:8]
    assert re.fullmatch(rf"pipeline-\d{{4}}-\d\d-\d\d-\d{{4}}-{commit}", runs.pipeline.name), runs.pipeline.name
    assert "textrnn" in runs.pipeline.tags
    for step in ("prepare", "encode", "promote"):
        assert {"textrnn", f"stage:{step}"} <= set(runs.task_runs[f"pipeline/{step}"].tags)


@pytest.mark.slow
def test_local_textrnn_lines_reach_the_task_runs_that_wrote_them(local: LocalRun) -> None:
    _assert_lines(local.runs, LOCAL_VARIANTS)


@pytest.mark.slow
def test_local_run_keeps_textrnns_info_lines_off_the_terminal(local: LocalRun) -> None:
    for text in ("epoch variant=", "registered model=", "onnxruntime provider=", "prepared train "):
        assert text not in local.terminal, local.terminal
    assert "Prefect: " in local.terminal, "the comparison is still printed"


@pytest.mark.slow
def test_local_runs_are_named_and_tagged(local: LocalRun) -> None:
    runs = local.runs
    _assert_pipeline_labels(runs)
    assert sorted(name for name in runs.flow_runs if name != "pipeline") == [f"train-{v}" for v in LOCAL_VARIANTS]
    for variant in LOCAL_VARIANTS:
        _assert_variant_tags(runs, variant)


@pytest.mark.slow
def test_each_variants_mlflow_run_links_to_the_flow_run_that_trained_it(local: LocalRun) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(local.mlflow_url)
    experiment = client.get_experiment_by_name("textrnn")
    for variant in LOCAL_VARIANTS:
        (run,) = client.search_runs([experiment.experiment_id], f"tags.variant = '{variant}'")
        flow_run = local.runs.flow_runs[f"train-{variant}"]
        assert run.data.tags["prefect.flow_run_id"] == str(flow_run.id)
        assert run.data.tags["prefect.flow_run_name"] == f"train-{variant}"
        # Prefect words the page's path by its version and UI setting (/runs/flow-run/..., /flow-runs/flow-run/...).
        url = run.data.tags["prefect.flow_run_url"]
        assert url.startswith("http") and url.endswith(f"/flow-run/{flow_run.id}"), url


@pytest.mark.slow
def test_a_variant_on_a_worker_logs_into_its_own_runs(distributed: PipelineRuns) -> None:
    variant_run = distributed.flow_runs[f"train-{WORKER_VARIANT}"]
    assert variant_run.deployment_id is not None and variant_run.work_pool_name == "gpu", "ran on the worker"
    _assert_lines(distributed, [WORKER_VARIANT])


@pytest.mark.slow
def test_distributed_runs_are_named_and_tagged(distributed: PipelineRuns) -> None:
    _assert_pipeline_labels(distributed)
    _assert_variant_tags(distributed, WORKER_VARIANT)
    assert {"gpu", "training"} <= set(distributed.flow_runs[f"train-{WORKER_VARIANT}"].tags), "the deployment's too"
