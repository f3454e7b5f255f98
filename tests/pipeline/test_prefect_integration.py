"""The scheduled, distributed pipeline on real Prefect components on loopback.

A module fixture starts `prefect server start` (sqlite under tmp, a free port on 127.0.0.1), a real
`mlflow server`, work pools `cpu` and `gpu` (process), one worker in `cpu` and two in `gpu` (each with
its own environment and global concurrency limit `gpu:<worker>`), then deploys prefect.yaml with
`prefect --no-prompt deploy --all`. The test triggers `nightly-train` with `prefect deployment run`
in distributed mode on the sample (two variants, one epoch, every path under tmp) and checks what the
servers recorded. Every process is started in its own session and stopped by its process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO_ROOT, path_overrides
from mlflow_server import free_port, start_tracking_server

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
VARIANTS = ["bag", "gru"]
GPU_WORKERS = ("gpu-worker-a", "gpu-worker-b")
MODEL_NAME = "agnews-rnn"
RUN_TIMEOUT_S = 480


@dataclass
class Stack:
    """The started processes, the environment that points a client at them, and where they log."""

    root: Path
    env: dict[str, str]
    api_url: str
    mlflow_url: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def start(self, name: str, args: list[str], **extra_env: str) -> None:
        """Start `args` in its own session (so its whole process group can be stopped), logging to a file."""
        with open(self.log(name), "wb") as handle:
            self.processes[name] = subprocess.Popen(
                args, stdout=handle, stderr=subprocess.STDOUT, env={**self.env, **extra_env},
                cwd=self.root, start_new_session=True,
            )

    def prefect(self, *args: str, cwd: Path | None = None, **extra_env: str) -> str:
        """Run a `prefect` CLI command against the server; return its output, failing with it on error."""
        result = subprocess.run(
            [str(BIN / "prefect"), "--no-prompt", *args], capture_output=True, text=True,
            env={**self.env, **extra_env}, cwd=cwd or self.root, timeout=180,
        )
        assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def logs(self, lines: int = 40) -> str:
        """The tail of every process's log, for failure messages."""
        tails = []
        for name in self.processes:
            text = self.log(name).read_text(errors="replace") if self.log(name).is_file() else ""
            tails.append(f"--- {name}\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(tails)

    def stop(self) -> None:
        """SIGTERM every process group, then SIGKILL those still there after 15 s."""
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes.values():
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _wait_for_http(url: str, process: subprocess.Popen, timeout_s: float, stack: Stack) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: process exited ({process.returncode}):\n{stack.logs()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s:\n{stack.logs()}")


def _client_env(root: Path, api_url: str, mlflow_url: str) -> dict[str, str]:
    """What every process gets: the servers, a private PREFECT_HOME, quiet libraries, fast worker polling."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "MLFLOW_TRACKING_URI": mlflow_url,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "ORT_DISABLE_TELEMETRY": "1",
        "DO_NOT_TRACK": "1",
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Prefect server + MLflow server + pools + GPU limits + deployments + 3 workers; all stopped after."""
    root = tmp_path_factory.mktemp("prefect-stack")
    mlflow = start_tracking_server(root / "mlflow")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    stack = Stack(root=root, env=_client_env(root, api_url, mlflow.url), api_url=api_url, mlflow_url=mlflow.url)
    try:
        stack.start("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)])
        _wait_for_http(f"{api_url}/health", stack.processes["server"], 180, stack)
        for pool in ("cpu", "gpu"):
            stack.prefect("work-pool", "create", pool, "--type", "process")
        for worker in GPU_WORKERS:
            stack.prefect("gcl", "create", f"gpu:{worker}", "--limit", "1")
        checkout = _checkout(root)
        copy_worker_checkout(checkout)
        stack.prefect("deploy", "--all", cwd=REPO_ROOT, TEXTRNN_HOME=str(checkout))
        stack.start("cpu-worker", _worker_args("cpu", "cpu-worker"), CUDA_VISIBLE_DEVICES="")
        # Each GPU worker has its own environment, as on its own machine (no GPU here: none visible).
        for worker in GPU_WORKERS:
            stack.start(worker, _worker_args("gpu", worker), CUDA_VISIBLE_DEVICES="")
        yield stack
    finally:
        stack.stop()
        mlflow.stop()


def rows_from_mlflow(mlflow_url: str, flow_run_id: Any) -> dict[str, dict]:
    """{variant: row} of the pipeline run of Prefect flow run `flow_run_id`, read from MLflow alone (the
    pipeline's parent run carries the flow run's id and every variant's announced result)."""
    from mlflow.tracking import MlflowClient

    from textrnn.results import announced_rows

    client = MlflowClient(mlflow_url)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    parents = client.search_runs(experiments, filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    assert len(parents) <= 1, [run.info.run_id for run in parents]
    return announced_rows(parents[0].info.run_id, mlflow_url) if parents else {}


def copy_worker_checkout(target: Path) -> None:
    """What a worker's checkout gives its flow runs: flows/, params.yaml and dvc.yaml (which declares what
    each step's cache key covers). Flow runs work there, as a worker does in its own checkout: textrnn
    writes only inside its working directory, and the tests' outputs stay out of the repo."""
    shutil.copytree(REPO_ROOT / "flows", target / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy2(REPO_ROOT / name, target / name)


def _checkout(root: Path) -> Path:
    """The workers' working directory (TEXTRNN_HOME) under the stack's root."""
    return root / "checkout"


def _worker_args(pool: str, name: str) -> list[str]:
    return [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process", "--name", name,
            "--limit", "1"]


def _pipeline_overrides(workdir: Path) -> list[str]:
    return [
        "orchestration.mode=distributed",
        "data.source=sample",
        "data.sample.train_rows=1000",
        "data.sample.test_rows=200",
        "train.epochs=1",
        "train.threads=1",
        *path_overrides(workdir),
    ]


@dataclass
class NightlyRun:
    """The pipeline's flow run, its variants' flow runs with their results (rows), and its artifact."""

    flow_run: object
    variant_runs: dict[str, object]
    rows: dict[str, dict]
    artifact_markdown: str


@pytest.fixture(scope="module")
def nightly(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> NightlyRun:
    """`prefect deployment run training-pipeline/nightly-train` in distributed mode; waits for the end."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterName,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    workdir = _checkout(stack.root)  # every output lies inside the workers' working directory
    name = f"it-nightly-{uuid.uuid4().hex[:8]}"
    parameters = {"params": "params.yaml", "variants": VARIANTS, "overrides": _pipeline_overrides(workdir)}
    stack.prefect("deployment", "run", "training-pipeline/nightly-train", "--params", json.dumps(parameters),
                  "--flow-run-name", name)
    with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        flow_run = _wait_for_terminal(client, FlowRunFilter(name=FlowRunFilterName(any_=[name])), stack)
        variant_runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["train-variant"])),
        )
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["variant-comparison"]))
        )
    # The rows as the pipeline collects them: from MLflow, not from the variant flow runs' results.
    rows = {f"train-{variant}": row for variant, row in rows_from_mlflow(stack.mlflow_url, flow_run.id).items()}
    return NightlyRun(flow_run=flow_run, variant_runs={run.name: run for run in variant_runs}, rows=rows,
                      artifact_markdown=artifacts[0].data if artifacts else "")


def _wait_for_terminal(client, flow_run_filter, stack: Stack):
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        runs = client.read_flow_runs(flow_run_filter=flow_run_filter)
        if runs and runs[0].state is not None and runs[0].state.is_final():
            return runs[0]
        time.sleep(2)
    raise AssertionError(f"nightly-train did not finish within {RUN_TIMEOUT_S} s:\n{stack.logs()}")


def test_nightly_run_completes(nightly: NightlyRun, stack: Stack) -> None:
    assert nightly.flow_run.state.is_completed(), f"{nightly.flow_run.state}:\n{stack.logs(80)}"


def test_each_variant_ran_as_its_own_flow_run_on_a_gpu_worker(nightly: NightlyRun) -> None:
    runs = nightly.variant_runs
    assert sorted(runs) == [f"train-{variant}" for variant in sorted(VARIANTS)]
    assert all(run.state.is_completed() for run in runs.values())
    assert all(run.work_pool_name == "gpu" for run in runs.values())
    # Separate processes, each started by a worker (its infrastructure pid) and linked under the pipeline.
    assert len({run.infrastructure_pid for run in runs.values()}) == len(VARIANTS)
    assert all(run.parent_task_run_id is not None for run in runs.values())
    workers = {row["worker"] for row in nightly.rows.values()}
    assert workers == set(GPU_WORKERS), "both GPU workers should have trained one variant each"
    assert len({row["pid"] for row in nightly.rows.values()}) == len(VARIANTS)


def test_mlflow_has_the_variant_runs_and_a_champion(nightly: NightlyRun, stack: Stack) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(stack.mlflow_url)
    rows = list(nightly.rows.values())
    assert len(rows) == len(VARIANTS)
    for row in rows:
        run = client.get_run(row["mlflow_run_id"])
        assert run.data.tags["variant"] == row["variant"]
        assert run.data.metrics["test_accuracy"] == pytest.approx(row["test_accuracy"])
        parent = client.get_run(run.data.tags["mlflow.parentRunId"])
        assert parent.data.tags["run_kind"] == "pipeline"
        assert row["mlflow_run_url"].startswith(stack.mlflow_url)
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert str(champion.version) in {row["model_version"] for row in rows}


def test_comparison_artifact_names_the_champion(nightly: NightlyRun) -> None:
    markdown = nightly.artifact_markdown
    assert all(f"| {variant} |" in markdown for variant in VARIANTS)
    assert "**champion**" in markdown
    assert all(worker in markdown for worker in GPU_WORKERS)


def test_nightly_deployment_has_its_cron_schedule(stack: Stack) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("training-pipeline/nightly-train")
        variant = client.read_deployment_by_name("train-variant/train-variant")
    schedules = [entry.schedule for entry in nightly.schedules if entry.active]
    assert [(s.cron, s.timezone) for s in schedules] == [("0 3 * * *", "UTC")]
    assert nightly.work_pool_name == "cpu" and variant.work_pool_name == "gpu"
    assert nightly.parameters["overrides"] == {"orchestration.mode": "distributed"}
    assert nightly.job_variables["working_dir"] == str(_checkout(stack.root))


def test_tune_deployments_run_workers_on_the_gpu_pool_and_start_paused(stack: Stack) -> None:
    """prefect.yaml's sweep deployments: the tune flow weekly on the cpu pool (created paused, distributed),
    its workers on the gpu pool."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
        weekly = client.read_deployment_by_name("tune/weekly-tune")
        worker = client.read_deployment_by_name("tune-worker/tune-worker")
    assert (weekly.entrypoint, weekly.work_pool_name) == ("flows/tuning.py:tune_flow", "cpu")
    assert (worker.entrypoint, worker.work_pool_name) == ("flows/tuning.py:tune_worker_flow", "gpu")
    assert set(weekly.tags) == {"textrnn", "tuning"} and set(worker.tags) == {"textrnn", "tuning", "gpu"}
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in weekly.schedules] == [("0 4 * * 1", "UTC", False)]
    assert not worker.schedules
    assert weekly.parameters == {"params": "params.yaml", "variant": "bilstm_mean", "workers": 2,
                                 "overrides": {"orchestration.mode": "distributed"}}
    for deployment in (weekly, worker):
        assert deployment.job_variables["working_dir"] == str(_checkout(stack.root))
