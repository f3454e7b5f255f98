"""Scale-out smoke test: the team stack of infra/docker-compose.yml, without Docker, on the same engines.

PostgreSQL from the Debian server binaries (a throwaway cluster on 127.0.0.1, created by the same
infra/postgres/init-databases.sh that compose mounts; as in compose, every worker gets the `optuna` database
as TEXTRNN_OPTUNA_STORAGE), an MLflow tracking server on its `mlflow` database
with proxied artifacts (`--serve-artifacts`: clients get only `mlflow-artifacts:` URIs), a Prefect server
on its `prefect` database, work pools `cpu` and `gpu`, one `cpu` worker and two `gpu` process workers, and
prefect.yaml deployed with `prefect --no-prompt deploy --all`. As in compose, both servers require credentials:
MLflow runs its basic-auth app (started through the image's entrypoint, infra/docker/mlflow-server.sh, which
writes the auth settings; users in the `mlflow` database) and Prefect checks PREFECT_SERVER_API_AUTH_STRING;
workers, the flow runs they start, the CLI and this test's own clients all sign in (MLFLOW_TRACKING_USERNAME/
PASSWORD, PREFECT_API_AUTH_STRING), and a client without credentials, or with wrong ones, gets 401. Then:

1. `nightly-train` in distributed mode, three variants: each variant is its own `train-variant` flow run,
   spread over both GPU workers; every MLflow run and registry version is in PostgreSQL (read through the
   MLflow client and straight from the `mlflow` database), and the champion alias is set.
2. `nightly-train` again with another learning rate, and one GPU worker dies mid-run: once a variant's
   flow run is Running on it and has sent its first heartbeat, the worker and the flow-run process it
   started (which Prefect puts in a session of its own) are SIGKILLed, as when a machine dies. The
   zombie automation (flows/resilience.py) marks that run Crashed when its heartbeats stop, the pipeline
   submits the variant again, the surviving worker trains it and the other variants, and the run completes.

Between the two (while both GPU workers live), `weekly-tune` runs a 4-trial sweep in distributed mode: the tune
flow on the cpu worker starts two `tune-worker` flow runs on the gpu pool, whose trials share the study in the
`optuna` database (read straight from it) and are MLflow child runs of the study's run (none left RUNNING).

Every process is started in its own session and stopped by its process group; the flow-run processes the
workers started are found through the process tree and stopped too; PostgreSQL stops with
`pg_ctl stop -m fast`. Reuses the Prefect stack helpers of test_prefect_integration and the servers of
mlflow_server. Run it alone with `make scale-out-smoke`.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

import postgres_server
from conftest import REPO_ROOT
from fault_kit import fault
from mlflow_server import Server, free_port, start_tracking_server
from test_prefect_integration import (
    BIN,
    GPU_WORKERS,
    MODEL_NAME,
    Stack,
    _client_env,
    _pipeline_overrides,
    _wait_for_http,
    _worker_args,
    copy_worker_checkout,
    rows_from_mlflow,
)

pytestmark = [pytest.mark.slow, pytest.mark.scale_out]

VARIANTS = ["bag", "gru", "rnn_masked"]
NIGHTLY = "training-pipeline/nightly-train"
# Seconds: generous for a busy 2-core runner, where the whole module takes five to seven minutes.
SERVER_START_S = 180
FIRST_RUN_S = 300
RESILIENCE_RUN_S = 360
# The zombie window for this test: two missed 30 s heartbeats instead of the default three.
ZOMBIE_AFTER_S = 60
# The MLflow image's entrypoint: writes the basic-auth app's settings from the environment, execs `mlflow server`.
MLFLOW_ENTRYPOINT = REPO_ROOT / "infra" / "docker" / "mlflow-server.sh"


def _roles() -> dict[str, str]:
    """The init script's variables, as in infra/.env, with fresh passwords (of the characters it allows)."""
    return {
        "MLFLOW_DB_NAME": "mlflow", "MLFLOW_DB_USER": "mlflow",
        "MLFLOW_DB_PASSWORD": f"mlflow-{secrets.token_hex(12)}",
        "PREFECT_DB_NAME": "prefect", "PREFECT_DB_USER": "prefect",
        "PREFECT_DB_PASSWORD": f"prefect-{secrets.token_hex(12)}",
        "OPTUNA_DB_NAME": "optuna", "OPTUNA_DB_USER": "optuna",
        "OPTUNA_DB_PASSWORD": f"optuna-{secrets.token_hex(12)}",
    }


# What a client (the CLI, a worker and the flow runs it starts, this test) needs in its environment to sign in.
CLIENT_CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING")


def _credentials() -> dict[str, str]:
    """The stack's auth secrets, as in infra/.env (same variable names), fresh for each run."""
    return {
        "MLFLOW_TRACKING_USERNAME": "textrnn-admin",
        "MLFLOW_TRACKING_PASSWORD": f"mlflow-admin-{secrets.token_hex(12)}",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
        "PREFECT_API_AUTH_STRING": f"textrnn:prefect-{secrets.token_hex(12)}",
    }


# ------------------------------------------------------------------------------------- processes


def _descendants(pid: int) -> list[Any]:
    """The live processes below `pid` (psutil.Process objects), deepest last; [] when `pid` is gone."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _kill_tree(processes: list[Any]) -> None:
    """SIGKILL each process's group (a flow-run process leads its own session), never our own group."""
    import psutil

    own_group = os.getpgid(0)
    for process in processes:
        with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            group = os.getpgid(process.pid)
            if group != own_group:
                os.killpg(group, signal.SIGKILL)
            else:
                process.kill()


@dataclass
class ScaleOutStack:
    """The started services, a `Stack` of Prefect processes, and how to reach the databases."""

    stack: Stack
    cluster: postgres_server.Cluster
    roles: dict[str, str]
    mlflow: Server
    artifacts: Path
    credentials: dict[str, str]
    workdir: Path  # the workers' working directory (TEXTRNN_HOME): every pipeline output lies inside it

    def sql(self, service: str, query: str, *args: Any) -> list[tuple]:
        """Rows of `query` on the service's database, connected over TCP as the service's own role."""
        import psycopg2

        upper = service.upper()
        connection = psycopg2.connect(
            host="127.0.0.1", port=self.cluster.port, dbname=self.roles[f"{upper}_DB_NAME"],
            user=self.roles[f"{upper}_DB_USER"], password=self.roles[f"{upper}_DB_PASSWORD"], connect_timeout=10,
        )
        try:
            with connection, connection.cursor() as cursor:
                cursor.execute(query, args)
                return cursor.fetchall()
        finally:
            connection.close()

    def logs(self, lines: int = 40) -> str:
        return (f"{self.stack.logs(lines)}\n--- mlflow\n{self.mlflow.log_tail(lines)}\n"
                f"--- postgres\n{self.cluster.log_tail(lines)}")


def _stop_with_descendants(stop: Any, processes: list[Any]) -> None:
    """`stop()` the process groups we started, then SIGKILL what is left below them: the flow-run
    processes that workers start live in sessions of their own, so they are found before their workers go.
    `processes` are Popen objects; one already reaped is skipped (its PID may belong to someone else now)."""
    tree = [child for process in processes if process.poll() is None for child in _descendants(process.pid)]
    try:
        stop()
    finally:
        _kill_tree([child for child in tree if child.is_running()])


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaleOutStack]:
    """PostgreSQL + MLflow and Prefect servers on it + pools, limits, deployments, 1 cpu and 2 gpu workers."""
    if not postgres_server.available():
        pytest.skip("PostgreSQL server binaries not installed (Debian: apt-get install postgresql)")
    if importlib.util.find_spec("flask_wtf") is None:
        pytest.fail("MLflow's basic-auth app needs Flask-WTF: pip install -e '.[test]' (it lists mlflow[auth])")
    root = tmp_path_factory.mktemp("scale-out")
    roles = _roles()
    credentials = _credentials()
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    with contextlib.ExitStack() as cleanup:  # every callback runs, last registered first, even if one raises
        cluster = postgres_server.start_cluster()
        cleanup.callback(cluster.stop)
        postgres_server.init_databases(cluster, roles)

        stack = Stack(root=root, env=_client_env(root, api_url, ""), api_url=api_url, mlflow_url="")
        cleanup.callback(lambda: _stop_with_descendants(stack.stop, list(stack.processes.values())))
        prefect_db = cluster.url("postgresql+asyncpg", roles["PREFECT_DB_USER"], roles["PREFECT_DB_PASSWORD"],
                                 roles["PREFECT_DB_NAME"])
        # Prefect migrates its database while MLflow migrates its own. Like compose's servers, neither holds
        # client credentials: Prefect's own services (automations) pass its auth check with the server setting.
        stack.start("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                    PREFECT_API_DATABASE_CONNECTION_URL=prefect_db,
                    PREFECT_SERVER_API_AUTH_STRING=credentials["PREFECT_API_AUTH_STRING"])
        mlflow_db = cluster.url("postgresql+psycopg2", roles["MLFLOW_DB_USER"], roles["MLFLOW_DB_PASSWORD"],
                                roles["MLFLOW_DB_NAME"])
        mlflow = start_tracking_server(
            root / "mlflow", timeout_s=SERVER_START_S, backend_store_uri=mlflow_db,
            app_name="basic-auth", launcher=["sh", str(MLFLOW_ENTRYPOINT)],
            # The compose service's environment: the entrypoint puts the users next to the tracking tables.
            extra_env={
                "MLFLOW_BACKEND_STORE_URI": mlflow_db,
                "MLFLOW_AUTH_CONFIG_PATH": str(root / "mlflow" / "basic_auth.ini"),
                "MLFLOW_AUTH_DEFAULT_PERMISSION": "READ",
                "MLFLOW_AUTH_CACHE_TTL_SECONDS": "60",
                "MLFLOW_AUTH_ADMIN_USERNAME": credentials["MLFLOW_TRACKING_USERNAME"],
                "MLFLOW_AUTH_ADMIN_PASSWORD": credentials["MLFLOW_TRACKING_PASSWORD"],
                "MLFLOW_FLASK_SERVER_SECRET_KEY": credentials["MLFLOW_FLASK_SERVER_SECRET_KEY"],
            },
        )
        cleanup.callback(_stop_with_descendants, mlflow.stop, [mlflow.process])
        stack.mlflow_url = mlflow.url
        # Every client from here on (CLI, workers and the flow runs they start) signs in to both servers and, as
        # compose's workers do, shares the Optuna storage in the `optuna` database.
        optuna_db = cluster.url("postgresql+psycopg2", roles["OPTUNA_DB_USER"], roles["OPTUNA_DB_PASSWORD"],
                                roles["OPTUNA_DB_NAME"])
        stack.env = {**_client_env(root, api_url, mlflow.url), **{key: credentials[key] for key in CLIENT_CREDENTIALS},
                     "TEXTRNN_OPTUNA_STORAGE": optuna_db}
        _wait_for_http(f"{api_url}/health", stack.processes["server"], SERVER_START_S, stack)

        for pool in ("cpu", "gpu"):
            stack.prefect("work-pool", "create", pool, "--type", "process")
        for worker in GPU_WORKERS:
            stack.prefect("gcl", "create", f"gpu:{worker}", "--limit", "1")
        workdir = root / "checkout"  # as workers have theirs (the image's /app)
        copy_worker_checkout(workdir)
        stack.prefect("deploy", "--all", cwd=REPO_ROOT, TEXTRNN_HOME=str(workdir))
        # The zombie automation (the pipeline creates it when missing), then this test's shorter window.
        _run_python(stack, "-m", "flows.resilience")
        _run_python(stack, "-m", "flows.resilience", "--within", str(ZOMBIE_AFTER_S))
        stack.start("cpu-worker", _worker_args("cpu", "cpu-worker"), CUDA_VISIBLE_DEVICES="")
        for worker in GPU_WORKERS:
            stack.start(worker, _worker_args("gpu", worker), CUDA_VISIBLE_DEVICES="")
        yield ScaleOutStack(stack=stack, cluster=cluster, roles=roles, mlflow=mlflow,
                            artifacts=root / "mlflow" / "artifacts", credentials=credentials, workdir=workdir)


def _run_python(stack: Stack, *args: str) -> str:
    result = subprocess.run([str(BIN / "python"), *args], capture_output=True, text=True, env=stack.env,
                            cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, f"python {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


# ------------------------------------------------------------------------------------ pipeline runs


@dataclass
class PipelineRun:
    """A nightly-train flow run, its train-variant flow runs (every attempt), and their rows by variant."""

    flow_run: Any
    variant_runs: list[Any]
    rows: dict[str, dict]
    killed: dict[str, Any] | None = None


def _prefect_client(team: ScaleOutStack, auth_string: str | None = ""):
    """A sync Prefect client of the stack's server, signed in with the stack's auth string (`auth_string=""`),
    with another one, or with none (`None`)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    if auth_string == "":
        auth_string = team.credentials["PREFECT_API_AUTH_STRING"]

    @contextlib.contextmanager
    def client() -> Iterator[Any]:
        updates = {PREFECT_API_URL: team.stack.api_url}
        if auth_string is not None:
            updates[PREFECT_API_AUTH_STRING] = auth_string
        unset = [] if auth_string is not None else [PREFECT_API_AUTH_STRING]
        with temporary_settings(updates, restore_defaults=unset), get_client(sync_client=True) as c:
            yield c

    return client()


@contextlib.contextmanager
def _mlflow_client(team: ScaleOutStack, signed_in: bool = True) -> Iterator[Any]:
    """An MlflowClient of the stack's server; MLflow reads the credentials from the environment at each request."""
    from mlflow.tracking import MlflowClient

    names = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
    with mock.patch.dict(os.environ):
        for name in names:
            os.environ.pop(name, None)
        if signed_in:
            os.environ.update({name: team.credentials[name] for name in names[:2]})
        yield MlflowClient(team.mlflow.url)


def _http_status(url: str, auth: str | None = None, body: dict | None = None) -> int:
    """The HTTP status of GET `url` (POST with a JSON `body`), with basic auth `user:password` or none."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def _start_nightly(team: ScaleOutStack, workdir: Path, *extra: str) -> str:
    """`prefect deployment run` nightly-train on VARIANTS with small settings; returns the flow run's name."""
    name = f"scale-out-{uuid.uuid4().hex[:8]}"
    overrides = [*_pipeline_overrides(workdir), "data.sample.train_rows=800", *extra]
    parameters = {"params": "params.yaml", "variants": VARIANTS, "overrides": overrides}
    team.stack.prefect("deployment", "run", NIGHTLY, "--params", json.dumps(parameters), "--flow-run-name", name)
    return name


def _pipeline_run(client: Any, name: str) -> Any | None:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
    return runs[0] if runs else None


def _variant_runs(client: Any, pipeline_id: Any) -> list[Any]:
    """Every train-variant flow run the pipeline started, oldest first."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    return client.read_flow_runs(
        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[pipeline_id])),
        sort=FlowRunSort.START_TIME_ASC,
    )


def _finish(client: Any, team: ScaleOutStack, name: str, timeout_s: float,
            on_poll: Any = None) -> PipelineRun:
    """Poll until the pipeline run is final (calling `on_poll(client, pipeline)` meanwhile); collect its runs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pipeline = _pipeline_run(client, name)
        if pipeline is not None and pipeline.state is not None and pipeline.state.is_final():
            variant_runs = [run for run in _variant_runs(client, pipeline.id) if run.name.startswith("train-")]
            with _mlflow_client(team):  # signed in: the rows come from MLflow, as the pipeline reads them
                rows = rows_from_mlflow(team.mlflow.url, pipeline.id)
            return PipelineRun(flow_run=pipeline, variant_runs=variant_runs, rows=rows)
        if pipeline is not None and on_poll is not None:
            on_poll(client, pipeline)
        time.sleep(1)
    raise AssertionError(f"{name} did not finish within {timeout_s:.0f} s:\n{team.logs(60)}")


@pytest.fixture(scope="module")
def workdir(team: ScaleOutStack) -> Path:
    return team.workdir


@pytest.fixture(scope="module")
def first_run(team: ScaleOutStack, workdir: Path) -> PipelineRun:
    name = _start_nightly(team, workdir)
    with _prefect_client(team) as client:
        return _finish(client, team, name, FIRST_RUN_S)


@dataclass
class Killer:
    """Kills one GPU worker, and what it started, once a variant's flow run is Running on it and has beaten."""

    team: ScaleOutStack
    killed: dict[str, Any] | None = None

    def _worker_of(self, pid: int) -> str | None:
        for worker in GPU_WORKERS:
            if any(child.pid == pid for child in _descendants(self.team.stack.processes[worker].pid)):
                return worker
        return None

    def __call__(self, client: Any, pipeline: Any) -> None:
        if self.killed is not None:
            return
        from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

        for run in _variant_runs(client, pipeline.id):
            if not (run.state and run.state.is_running() and run.infrastructure_pid):
                continue
            pid = int(str(run.infrastructure_pid).rsplit(":", 1)[-1])
            worker = self._worker_of(pid)
            if worker is None:
                continue
            # Prefect's zombie detection starts from a flow run's first heartbeat: wait for it to be recorded.
            beats = client.read_events(EventFilter(event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
                                                   resource=EventResourceFilter(id=[f"prefect.flow-run.{run.id}"])),
                                       limit=1)
            if not beats.events:
                continue
            process = self.team.stack.processes[worker]
            tree = _descendants(process.pid)
            os.killpg(process.pid, signal.SIGKILL)  # the worker's own process group
            _kill_tree(tree)  # the flow-run process (its own session) and anything below it
            process.wait(timeout=30)
            self.killed = {"worker": worker, "flow_run_id": run.id, "variant": run.parameters["variant"],
                           "flow_run_process": next(child for child in tree if child.pid == pid),
                           "at": datetime.now(timezone.utc)}
            return


@pytest.fixture(scope="module")
def resilience_run(team: ScaleOutStack, workdir: Path, first_run: PipelineRun) -> PipelineRun:
    """nightly-train again (another learning rate: new training, cached data), killing a GPU worker mid-run."""
    name = _start_nightly(team, workdir, "train.learning_rate=0.002")
    killer = Killer(team)
    with _prefect_client(team) as client:
        run = _finish(client, team, name, RESILIENCE_RUN_S, on_poll=killer)
    run.killed = killer.killed
    return run


# --------------------------------------------------------------------------------------------- tests


def test_services_keep_their_state_in_postgres(team: ScaleOutStack) -> None:
    # Each service created its schema in its own database, through its own role over TCP.
    assert team.sql("mlflow", "SELECT count(*) FROM alembic_version")[0][0] == 1
    assert team.sql("prefect", "SELECT count(*) FROM alembic_version")[0][0] == 1
    deployments = {row[0] for row in team.sql("prefect", "SELECT name FROM deployment")}
    assert {"nightly-train", "train-variant", "batch-predict", "weekly-tune", "tune-worker"} <= deployments
    with _prefect_client(team) as client:
        automations = client.read_automations()
    assert [automation.name for automation in automations] == ["textrnn: crash zombie flow runs"]
    assert automations[0].trigger.within.total_seconds() == ZOMBIE_AFTER_S  # updated in place, not duplicated
    # MLflow's users sit next to its tracking tables, under their own migration history; only the admin so far.
    assert team.sql("mlflow", "SELECT count(*) FROM alembic_version_auth")[0][0] == 1
    admin = team.credentials["MLFLOW_TRACKING_USERNAME"]
    assert team.sql("mlflow", "SELECT username, is_admin FROM users") == [(admin, True)]


@fault(12, "a client without credentials, or with wrong ones, calls the team stack's MLflow (tracking, registry, "
           "artifact proxy, UI API) and Prefect APIs",
       "401 from every one (only the health checks answer); the stack's own clients sign in and the pipeline runs")
def test_servers_refuse_clients_without_credentials(team: ScaleOutStack) -> None:
    """Only the health checks are open: every other MLflow or Prefect request needs the stack's credentials."""
    from mlflow.exceptions import MlflowException
    from prefect.exceptions import PrefectHTTPStatusError

    creds = team.credentials
    right = f"{creds['MLFLOW_TRACKING_USERNAME']}:{creds['MLFLOW_TRACKING_PASSWORD']}"
    wrong = f"{creds['MLFLOW_TRACKING_USERNAME']}:not-the-password"
    mlflow_apis = [
        "/api/2.0/mlflow/experiments/search?max_results=1",  # tracking
        "/api/2.0/mlflow/registered-models/search",  # registry
        "/api/2.0/mlflow-artifacts/artifacts",  # the artifact proxy: models and data behind it
        "/ajax-api/2.0/mlflow/experiments/search?max_results=1",  # what the web UI calls
    ]
    for path in mlflow_apis:
        url = team.mlflow.url + path
        assert (_http_status(url), _http_status(url, wrong), _http_status(url, right)) == (401, 401, 200), path
    assert _http_status(team.mlflow.url + "/health") == 200  # compose's healthcheck and textrnn's probe
    with _mlflow_client(team, signed_in=False) as anonymous, pytest.raises(MlflowException, match="401"):
        anonymous.search_experiments()

    flow_runs = f"{team.stack.api_url}/flow_runs/filter"
    prefect_auth = creds["PREFECT_API_AUTH_STRING"]
    statuses = (_http_status(flow_runs, body={}), _http_status(flow_runs, "textrnn:not-the-string", body={}),
                _http_status(flow_runs, prefect_auth, body={}))
    assert statuses == (401, 401, 200)
    assert _http_status(f"{team.stack.api_url}/health") == 200
    for auth_string in (None, "textrnn:not-the-string"):
        with _prefect_client(team, auth_string=auth_string) as anonymous, pytest.raises(PrefectHTTPStatusError) as caught:
            anonymous.read_work_pools()
        assert caught.value.response.status_code == 401


def test_nightly_run_completes_with_variants_on_both_gpu_workers(first_run: PipelineRun, team: ScaleOutStack) -> None:
    assert first_run.flow_run.state.is_completed(), f"{first_run.flow_run.state}:\n{team.logs(80)}"
    runs = first_run.variant_runs
    assert sorted(run.name for run in runs) == sorted(f"train-{variant}" for variant in VARIANTS)
    assert all(run.state.is_completed() and run.work_pool_name == "gpu" for run in runs)
    assert len({run.infrastructure_pid for run in runs}) == len(VARIANTS)
    assert {row["worker"] for row in first_run.rows.values()} == set(GPU_WORKERS), first_run.rows
    # The flow runs are in Prefect's Postgres database.
    ids = [str(run.id) for run in [first_run.flow_run, *runs]]
    states = team.sql("prefect", "SELECT state_type FROM flow_run WHERE id::text = ANY(%s)", ids)
    assert [state for (state,) in states] == ["COMPLETED"] * len(ids)


def test_runs_and_versions_are_in_the_postgres_backed_mlflow(first_run: PipelineRun, team: ScaleOutStack) -> None:
    rows = first_run.rows
    assert sorted(rows) == sorted(VARIANTS)
    run_ids = [row["mlflow_run_id"] for row in rows.values()]
    with _mlflow_client(team) as client:
        for variant, row in rows.items():
            run = client.get_run(row["mlflow_run_id"])
            assert run.info.status == "FINISHED" and run.data.tags["variant"] == variant
            # Proxied artifacts: the client only ever sees the server's URI scheme.
            assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
            version = client.get_model_version(MODEL_NAME, row["model_version"])
            assert version.run_id == row["mlflow_run_id"]

    # The same, straight from the `mlflow` database: the backend store is PostgreSQL.
    stored = team.sql("mlflow", "SELECT run_uuid, status FROM runs WHERE run_uuid = ANY(%s)", run_ids)
    assert sorted(stored) == sorted((run_id, "FINISHED") for run_id in run_ids)
    versions = team.sql("mlflow", "SELECT version::text, run_id FROM model_versions WHERE name = %s", MODEL_NAME)
    assert sorted(versions) == sorted((row["model_version"], row["mlflow_run_id"]) for row in rows.values())
    # And the artifacts went through the server to its --artifacts-destination.
    assert list(team.artifacts.rglob("model.onnx")), f"no model.onnx under {team.artifacts}"


def test_champion_alias_is_set(first_run: PipelineRun, team: ScaleOutStack) -> None:
    with _mlflow_client(team) as client:
        champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert champion.version in {row["model_version"] for row in first_run.rows.values()}
    aliases = team.sql("mlflow", "SELECT alias, version::text FROM registered_model_aliases WHERE name = %s",
                       MODEL_NAME)
    assert aliases == [("champion", champion.version)]


# ------------------------------------------------------------------------------------------ a sweep
# Run while both GPU workers live: the resilience tests below kill one.

TUNE = "tune/weekly-tune"
SWEEP_VARIANT, SWEEP_STUDY, SWEEP_TRIALS, SWEEP_WORKERS = "bag", "scale-out-sweep", 4, 2
# Workers that start their last trials at the same moment can each start one more (README, Sweeps).
SWEEP_AT_MOST = SWEEP_TRIALS + SWEEP_WORKERS - 1
SWEEP_RUN_S = 300


@dataclass
class SweepRun:
    """The tune flow run, its tune-worker flow runs, and the markdown of its study artifact."""

    flow_run: Any
    worker_runs: list[Any]
    artifact_markdown: str


@pytest.fixture(scope="module")
def sweep(team: ScaleOutStack, workdir: Path) -> SweepRun:
    """`prefect deployment run tune/weekly-tune`: a 4-trial study of `bag` on two GPU workers, tiny settings."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from flows.tuning import STUDY_KEY

    name = f"scale-out-tune-{uuid.uuid4().hex[:8]}"
    overrides = [*_pipeline_overrides(workdir), "data.sample.train_rows=800", "train.epochs=2",
                 "tune.space={learning_rate: {low: 0.001, high: 0.02, log: true}}", "tune.heartbeat_seconds=2"]
    parameters = {"params": "params.yaml", "variant": SWEEP_VARIANT, "study": SWEEP_STUDY, "trials": SWEEP_TRIALS,
                  "workers": SWEEP_WORKERS, "overrides": overrides}
    team.stack.prefect("deployment", "run", TUNE, "--params", json.dumps(parameters), "--flow-run-name", name)
    deadline = time.monotonic() + SWEEP_RUN_S
    with _prefect_client(team) as client:
        while time.monotonic() < deadline:
            run = _pipeline_run(client, name)
            if run is not None and run.state is not None and run.state.is_final():
                artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[STUDY_KEY]), flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
                return SweepRun(flow_run=run, worker_runs=_variant_runs(client, run.id),
                                artifact_markdown=artifacts[0].data if artifacts else "")
            time.sleep(1)
    raise AssertionError(f"{name} did not finish within {SWEEP_RUN_S} s:\n{team.logs(60)}")


def _study_trials(team: ScaleOutStack) -> list[tuple[int, str, str | None]]:
    """(number, state, MLflow run id) of each trial of the sweep's study, read from the `optuna` database."""
    rows = team.sql("optuna", """
        SELECT t.number, t.state::text, a.value_json FROM trials t JOIN studies s ON s.study_id = t.study_id
        LEFT JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'mlflow_run_id'
        WHERE s.study_name = %s ORDER BY t.number""", SWEEP_STUDY)
    return [(number, state, json.loads(run_id) if run_id else None) for number, state, run_id in rows]


def test_sweep_runs_its_workers_on_the_gpu_pool(sweep: SweepRun, team: ScaleOutStack) -> None:
    run = sweep.flow_run
    assert run.state.is_completed(), f"{run.state}:\n{team.logs(80)}"
    assert {"textrnn", "tuning", f"variant:{SWEEP_VARIANT}", "stage:tune"} <= set(run.tags), run.tags
    workers = sweep.worker_runs
    label = f"tune-{SWEEP_VARIANT}-{SWEEP_STUDY}"
    assert sorted(worker.name for worker in workers) == [f"{label}-worker-{n}" for n in range(1, SWEEP_WORKERS + 1)]
    assert all(worker.state.is_completed() and worker.work_pool_name == "gpu" for worker in workers), \
        [(worker.name, worker.state) for worker in workers]
    assert all({"gpu", "stage:tune-worker", f"variant:{SWEEP_VARIANT}"} <= set(worker.tags) for worker in workers)
    assert len({worker.infrastructure_pid for worker in workers}) == SWEEP_WORKERS  # two flow-run processes
    # The artifact lists every trial, with its MLflow run, and names the best.
    trials = _study_trials(team)
    assert "**Best**: trial" in sweep.artifact_markdown, sweep.artifact_markdown
    for number, state, run_id in trials:
        assert f"| {number} | {state.lower()} |" in sweep.artifact_markdown and run_id in sweep.artifact_markdown


def test_sweep_study_lives_in_the_optuna_database(sweep: SweepRun, team: ScaleOutStack) -> None:
    trials = _study_trials(team)
    assert SWEEP_TRIALS <= len(trials) <= SWEEP_AT_MOST, trials
    assert [number for number, _, _ in trials] == list(range(len(trials))), trials
    assert {state for _, state, _ in trials} <= {"COMPLETE", "PRUNED"}, trials
    assert "COMPLETE" in {state for _, state, _ in trials}
    assert all(run_id for _, _, run_id in trials), trials
    attributes = dict(team.sql("optuna", "SELECT a.key, a.value_json FROM study_user_attributes a JOIN studies s "
                                         "ON s.study_id = a.study_id WHERE s.study_name = %s", SWEEP_STUDY))
    assert json.loads(attributes["variant"]) == SWEEP_VARIANT
    # Every worker beat into the storage while it ran a trial (Optuna's heartbeat: how a dead one is found).
    beats = team.sql("optuna", "SELECT count(*) FROM trial_heartbeats h JOIN trials t ON t.trial_id = h.trial_id "
                               "JOIN studies s ON s.study_id = t.study_id WHERE s.study_name = %s", SWEEP_STUDY)
    assert beats[0][0] == len(trials)


def test_sweep_trials_are_child_runs_in_the_postgres_backed_mlflow(sweep: SweepRun, team: ScaleOutStack) -> None:
    from textrnn.runs import PID_TAG

    runs = team.sql("mlflow", """
        SELECT r.run_uuid, r.status, kind.value, parent.value, pid.value FROM runs r
        JOIN tags study ON study.run_uuid = r.run_uuid AND study.key = 'tune_study' AND study.value = %s
        JOIN tags kind ON kind.run_uuid = r.run_uuid AND kind.key = 'run_kind'
        LEFT JOIN tags parent ON parent.run_uuid = r.run_uuid AND parent.key = 'mlflow.parentRunId'
        LEFT JOIN tags pid ON pid.run_uuid = r.run_uuid AND pid.key = %s
        WHERE r.lifecycle_stage = 'active'""", SWEEP_STUDY, PID_TAG)
    studies = [run for run in runs if run[2] == "tune"]
    assert len(studies) == 1, runs  # one study run, however many workers asked for it
    study_run = studies[0][0]
    children = [run for run in runs if run[2] == "trial"]
    assert SWEEP_TRIALS <= len(children) <= SWEEP_AT_MOST, runs
    assert all(parent == study_run for _, _, _, parent, _ in children), runs
    assert "RUNNING" not in {status for _, status, _, _, _ in runs}, runs
    # The same runs Optuna recorded for its trials, trained in the tune-worker flow-run processes.
    assert {run_id for run_id, *_ in children} == {run_id for _, _, run_id in _study_trials(team)}
    worker_pids = {str(worker.infrastructure_pid).rsplit(":", 1)[-1] for worker in sweep.worker_runs}
    assert {pid for *_, pid in children} <= worker_pids, (children, worker_pids)
    with _mlflow_client(team) as client:
        best = client.get_run(study_run).data
    assert best.tags["best_run_id"] in {run_id for run_id, *_ in children}
    assert best.metrics["trials_complete"] + best.metrics.get("trials_pruned", 0) == len(children)


def test_pipeline_completes_after_a_gpu_worker_is_killed(resilience_run: PipelineRun, team: ScaleOutStack) -> None:
    killed = resilience_run.killed
    assert killed is not None, f"no variant flow run was seen Running on a GPU worker:\n{team.logs(60)}"
    survivor = next(worker for worker in GPU_WORKERS if worker != killed["worker"])
    assert team.stack.processes[killed["worker"]].returncode == -signal.SIGKILL
    assert team.stack.processes[survivor].poll() is None
    assert _gone(killed["flow_run_process"]), "the killed worker's flow-run process survived"

    assert resilience_run.flow_run.state.is_completed(), f"{resilience_run.flow_run.state}:\n{team.logs(80)}"
    by_id = {run.id: run for run in resilience_run.variant_runs}
    dead = by_id[killed["flow_run_id"]]
    # Marked Crashed by the zombie automation once its heartbeats stopped, within the window...
    assert dead.state.is_crashed(), dead.state
    assert "missing heartbeats" in (dead.state.message or ""), dead.state.message
    detected_after = (dead.state.timestamp - killed["at"]).total_seconds()
    assert 0 < detected_after <= ZOMBIE_AFTER_S + 30, detected_after
    # ...then the same variant was submitted again and trained by the surviving worker.
    again = [run for run in resilience_run.variant_runs
             if run.parameters["variant"] == killed["variant"] and run.id != dead.id]
    assert len(again) == 1 and again[0].state.is_completed(), [(run.name, run.state) for run in again]
    assert sorted(resilience_run.rows) == sorted(VARIANTS)
    # Every variant of this run finished on the survivor: the other worker was dead before any could end.
    assert {row["worker"] for row in resilience_run.rows.values()} == {survivor}
    assert len(resilience_run.variant_runs) == len(VARIANTS) + 1
    # No live run was taken for a zombie: only the killed one was ever Crashed.
    ids = [str(run.id) for run in [resilience_run.flow_run, *resilience_run.variant_runs]]
    crashed = team.sql("prefect", "SELECT flow_run_id::text FROM flow_run_state "
                                  "WHERE type = 'CRASHED' AND flow_run_id::text = ANY(%s)", ids)
    assert crashed == [(str(dead.id),)]


def test_flow_runs_beat_every_30_seconds(resilience_run: PipelineRun, team: ScaleOutStack) -> None:
    """prefect.yaml's PREFECT_FLOWS_HEARTBEAT_FREQUENCY reaches the flow runs (Prefect's default is 180 s, which
    a 60 s zombie window would take for dead). The pipeline run outlived the zombie window, so it beat twice."""
    pipeline = resilience_run.flow_run
    beats = [row[0] for row in team.sql(
        "prefect", "SELECT occurred FROM events WHERE event = 'prefect.flow-run.heartbeat' AND resource_id = %s "
                   "ORDER BY occurred", f"prefect.flow-run.{pipeline.id}")]
    assert len(beats) >= 2, beats
    gaps = [(later - earlier).total_seconds() for earlier, later in zip(beats, beats[1:])]
    assert max(gaps) < 45, gaps


def test_killed_run_is_retrained_into_mlflow_and_registered(resilience_run: PipelineRun, first_run: PipelineRun,
                                                            team: ScaleOutStack) -> None:
    rows = resilience_run.rows
    old_runs = {row["mlflow_run_id"] for row in first_run.rows.values()}
    assert all(row["mlflow_run_id"] not in old_runs for row in rows.values()), "training was cached"
    with _mlflow_client(team) as client:
        for row in rows.values():
            assert client.get_run(row["mlflow_run_id"]).data.params["train.learning_rate"] == "0.002"
        champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    run_ids = [row["mlflow_run_id"] for row in rows.values()]
    stored = team.sql("mlflow", "SELECT run_uuid FROM runs WHERE run_uuid = ANY(%s) AND status = 'FINISHED'",
                      run_ids)
    assert len(stored) == len(VARIANTS)
    # The killed attempt's MLflow run did not stay RUNNING: the pipeline marked it KILLED before resubmitting.
    assert team.sql("mlflow", "SELECT run_uuid, name FROM runs WHERE status = 'RUNNING'") == []
    versions = team.sql("mlflow", "SELECT count(*) FROM model_versions WHERE name = %s", MODEL_NAME)
    assert versions[0][0] == 2 * len(VARIANTS)
    every_version = {row["model_version"] for row in [*first_run.rows.values(), *rows.values()]}
    assert champion.version in every_version



def _gone(process: Any) -> bool:
    """Whether a psutil.Process has ended (a zombie waiting for its new parent to reap it counts as ended)."""
    import psutil

    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
