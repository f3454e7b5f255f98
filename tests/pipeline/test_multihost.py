"""Multi-host proof (issue 13): the distributed pipeline across separate hosts that share no disk.

Four hosts on this one machine (tests/netns.py): network namespaces on a private /24, each linked by a veth
pair to a bridge on the server host, each with its own hostname and its own mounts:

    server    10.213.N.1   MLflow tracking server (sqlite, proxied artifacts) and Prefect server (sqlite)
    pipeline  10.213.N.11  creates the work pools, deploys prefect.yaml from its checkout, runs the `cpu`
                           worker (which runs nightly-train) and starts nightly-train
    gpu-a     10.213.N.12  a `gpu` process worker (gpu-worker-a) with its limit `gpu:gpu-worker-a`
    gpu-b     10.213.N.13  a `gpu` process worker (gpu-worker-b) with its limit `gpu:gpu-worker-b`

Each host has a private tmpfs at the checkout's path holding its own copy of the checkout (the working
tree's tracked and untracked-not-ignored files, as they are now, and .git: the same commit and the same
changes), which is its working directory (TEXTRNN_HOME: prefect.yaml wants the checkout at the same path on
every worker) and holds its PREFECT_HOME (.prefect), and a private /tmp (also HOME). The installed
virtualenv is the one thing the hosts share, read-only, as machines share an image; its editable install
points at <checkout>/src, which in each host is that host's own copy. The pipeline host is a host of its
own, not the server's: then the pipeline can read the variants' rows neither from a gpu host's disk nor from
the servers' (MLflow's database and artifact store), only over HTTP. It costs nothing: the same processes
run either way. No Prefect result storage is configured: the test proves none needs sharing.

The test process joins the hosts' network from one thread (netns.network_thread) to wait for the servers
and read what they recorded; it reaches nothing but the addresses it created. Every process is stopped
by its process group, the flow-run processes below the workers too, then every process left in the
namespaces is killed and the namespaces (with their links and mounts) are deleted, also on failure.

Where the machine refuses namespaces (not root, iproute2/util-linux missing, EPERM) the test skips with the
reason, except where it is required (CI=true or TEXTRNN_REQUIRE_MULTIHOST=1, which .ci/run sets): then it
fails. Run it alone with `make multihost`: one to two minutes on a 2-core machine.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shlex
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

import netns
from conftest import REPO_ROOT
from test_prefect_integration import (
    BIN,
    GPU_WORKERS,
    MODEL_NAME,
    Stack,
    _client_env,
    _pipeline_overrides,
    _wait_for_http,
    _worker_args,
)
from test_scale_out import NIGHTLY, VARIANTS, _pipeline_run, _stop_with_descendants, _variant_runs

pytestmark = pytest.mark.slow

REQUIRED = (os.environ.get("CI", "").lower() in ("1", "true", "yes")
            or os.environ.get("TEXTRNN_REQUIRE_MULTIHOST", "") not in ("", "0"))
SERVER, PIPELINE = "server", "pipeline"
GPU_HOSTS = dict(zip(("gpu-a", "gpu-b"), GPU_WORKERS))  # host role -> its worker's name
ROLES = (SERVER, PIPELINE, *GPU_HOSTS)
PREFECT_PORT, MLFLOW_PORT = 4200, 5000
VENV = Path(sys.prefix)
CHECKOUT = REPO_ROOT  # every host's own copy lies at the checkout's own path
# Seconds, for a busy 2-core machine.
SERVER_START_S = 150
CLI_S = 150
PIPELINE_S = 300
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


# ------------------------------------------------------------------------------------------ the hosts


def _checkout_archive() -> bytes:
    """A tar of the checkout as it is now: tracked and untracked-not-ignored files (deleted ones left out)
    and .git, so every host's copy is at the same commit with the same changes."""
    listed = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(REPO_ROOT), "ls-files", "-z", "--cached",
                             "--others", "--exclude-standard"], capture_output=True, check=True, timeout=60).stdout
    paths = [REPO_ROOT / name for name in sorted(set(listed.decode().split("\0"))) if name]
    git = REPO_ROOT / ".git"  # a directory; a file in a worktree (its gitdir, outside, stays visible)
    paths += [git] if git.is_file() else sorted(git.rglob("*"))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in paths:
            if path.name.endswith(".lock") or not (path.is_symlink() or path.is_file() or path.is_dir()):
                continue
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile (someone works in the checkout)
                tar.add(path, arcname=path.relative_to(REPO_ROOT).as_posix(), recursive=False)
    return buffer.getvalue()


def _host_env(api_url: str, mlflow_url: str) -> dict[str, str]:
    """Every host's environment: the same paths on each, which each host resolves on its own disk."""
    env = _client_env(CHECKOUT, api_url, mlflow_url)
    for name in list(env):
        if name.lower() in PROXY_VARIABLES or name.startswith("PYTEST_"):
            env.pop(name)  # the hosts reach nothing but each other
    env.update({
        "PREFECT_HOME": str(CHECKOUT / ".prefect"),
        "TEXTRNN_HOME": str(CHECKOUT),
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "PREFECT_SERVER_UI_ENABLED": "false",  # the server host serves the API only: no UI build to copy
        "CUDA_VISIBLE_DEVICES": "",  # no GPU here: none visible
    })
    return env


# Run in each host with the virtualenv's python: `write` leaves a marker named after the host in each of its
# private places; `report` says which hosts' markers it sees there, and what the host is made of.
PROBE = r"""
import importlib.util, json, os, socket, sys
role, phase, roles = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
places = {"checkout": os.environ["TEXTRNN_HOME"], "prefect_home": os.environ["PREFECT_HOME"], "tmp": "/tmp"}
def marker(place, host):
    return os.path.join(places[place], ".multihost-marker-" + host)
if phase == "write":
    for place in places:
        os.makedirs(places[place], exist_ok=True)
        with open(marker(place, role), "w") as handle:
            handle.write(role)
    sys.exit(0)
mounts = {}
for line in open("/proc/self/mountinfo"):
    fields, rest = line.split(" - ")
    mounts[fields.split()[4]] = rest.split()[:2]
origin = importlib.util.find_spec("textrnn").origin
def address(field):
    return socket.inet_ntoa(bytes.fromhex(field)[::-1])
routes = [line.split() for line in open("/proc/net/route").readlines()[1:]]
print(json.dumps({
    "hostname": socket.gethostname(),
    "namespaces": {ns: os.readlink("/proc/self/ns/" + ns) for ns in ("net", "mnt", "uts")},
    "devices": {place: os.stat(path).st_dev for place, path in places.items()},
    "filesystems": {place: mounts.get(path) for place, path in places.items()},
    "textrnn": origin,
    "textrnn_device": os.stat(origin).st_dev,
    "venv": sys.prefix,
    "venv_writable": os.access(sys.prefix, os.W_OK),
    "routes": sorted(address(r[1]) + "/" + address(r[7]) for r in routes),
    "markers": {place: sorted(h for h in roles if os.path.exists(marker(place, h))) for place in places},
}))
"""


@dataclass
class Cluster:
    """The hosts, every process started in them (with logs), the servers' URLs, and the test's way in."""

    hosts: dict[str, netns.Host]
    stack: Stack
    api_url: str
    mlflow_url: str
    network: ThreadPoolExecutor  # a thread in the hosts' network
    probes: dict[str, dict]  # each host's PROBE report
    stopping: threading.Event  # set on the way out: waits in the network thread give up

    def on_network(self, function: Any, *args: Any, timeout: float = 60) -> Any:
        """`function(*args)` from the thread in the hosts' network."""
        return self.network.submit(function, *args).result(timeout=timeout)

    def run(self, role: str, *args: str, timeout: float = CLI_S) -> str:
        """Run a command in a host, in its checkout; return its output, failing with it on error."""
        result = self.hosts[role].run(args, cwd=CHECKOUT, env=self.stack.env, timeout=timeout)
        assert result.returncode == 0, f"{role}: {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def start(self, role: str, name: str, *args: str, **extra_env: str) -> None:
        """Start a long-running process in a host (its own process group, logging to `<name>.log`)."""
        self.stack.start(name, self.hosts[role].command(args, cwd=CHECKOUT), **extra_env)

    def in_parallel(self, *calls: tuple[str, tuple[str, ...]]) -> list[str]:
        """`run(role, *args)` for each (role, args) at once; their outputs, in order."""
        with ThreadPoolExecutor(max_workers=len(calls)) as pool:
            futures = [pool.submit(self.run, role, *args) for role, args in calls]
            return [future.result() for future in futures]


def _prefect(*args: str) -> tuple[str, ...]:
    return (str(BIN / "prefect"), "--no-prompt", *args)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reason = netns.unavailable()
    if reason is not None:
        if REQUIRED:
            pytest.fail(f"multi-host test required here (CI / TEXTRNN_REQUIRE_MULTIHOST) but {reason}", pytrace=False)
        pytest.skip(reason)
    spec = importlib.util.find_spec("textrnn")
    if spec is None or not Path(spec.origin).is_relative_to(REPO_ROOT / "src"):
        pytest.fail(f"textrnn must be installed editable from {REPO_ROOT / 'src'} (make install), not "
                    f"{spec and spec.origin}: each host runs its own copy of the checkout's src", pytrace=False)
    logs = tmp_path_factory.mktemp("multihost")
    archive = _checkout_archive()
    with contextlib.ExitStack() as cleanup:  # every callback runs, last registered first, even if one raises
        hosts = cleanup.enter_context(netns.hosts(ROLES, CHECKOUT, carry=[VENV]))
        server = hosts[SERVER].address
        api_url, mlflow_url = f"http://{server}:{PREFECT_PORT}/api", f"http://{server}:{MLFLOW_PORT}"
        # This process's own clients go straight to the server's address, never through a proxy.
        bypass = ",".join(filter(None, [os.environ.get("NO_PROXY") or os.environ.get("no_proxy"), server]))
        cleanup.enter_context(mock.patch.dict(os.environ, {"NO_PROXY": bypass, "no_proxy": bypass}))
        stack = Stack(root=logs, env=_host_env(api_url, mlflow_url), api_url=api_url, mlflow_url=mlflow_url)
        cleanup.callback(lambda: _stop_with_descendants(stack.stop, list(stack.processes.values())))
        network = cleanup.enter_context(netns.network_thread(hosts[SERVER]))
        cluster = Cluster(hosts=hosts, stack=stack, api_url=api_url, mlflow_url=mlflow_url, network=network,
                          probes={}, stopping=threading.Event())
        # On the way out, first end a wait in the network thread (within seconds), then stop the processes.
        cleanup.callback(cluster.stopping.set)

        # Each host gets its own copy of the checkout, owned by root there (git runs in it).
        with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            copies = {role: pool.submit(host.run, ["tar", "-x", "--no-same-owner", "-C", str(CHECKOUT)],
                                        input=archive, timeout=120) for role, host in hosts.items()}
            for role, copy in copies.items():
                assert copy.result().returncode == 0, f"{role}: copying the checkout: {copy.result().stderr}"

        cluster.start(SERVER, "prefect-server", str(BIN / "prefect"), "server", "start", "--host", server,
                      "--port", str(PREFECT_PORT))
        cluster.start(SERVER, "mlflow-server", str(BIN / "mlflow"), "server",
                      "--backend-store-uri", f"sqlite:///{CHECKOUT / 'mlflow.db'}",
                      "--serve-artifacts", "--artifacts-destination", str(CHECKOUT / "mlartifacts"),
                      "--host", server, "--port", str(MLFLOW_PORT), "--workers", "1",
                      MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no job workers for GenAI features
        # While the servers start: what each host is made of, seen from inside it.
        roles = ",".join(ROLES)
        cluster.in_parallel(*((role, (str(BIN / "python"), "-c", PROBE, role, "write", roles)) for role in ROLES))
        reports = cluster.in_parallel(*((role, (str(BIN / "python"), "-c", PROBE, role, "report", roles))
                                        for role in ROLES))
        cluster.probes = {role: json.loads(report) for role, report in zip(ROLES, reports)}
        cluster.on_network(_wait_for_http, f"{mlflow_url}/health", stack.processes["mlflow-server"],
                           SERVER_START_S, stack, timeout=SERVER_START_S + 10)
        cluster.on_network(_wait_for_http, f"{api_url}/health", stack.processes["prefect-server"],
                           SERVER_START_S, stack, timeout=SERVER_START_S + 10)

        # As `make deploy` on the pipeline host and the start of `make worker` on each gpu host, at once.
        deploy = ("sh", "-c", " && ".join([
            *(shlex.join(_prefect("work-pool", "create", pool, "--type", "process")) for pool in ("cpu", "gpu")),
            shlex.join(_prefect("deploy", "--all")),
        ]))
        cluster.in_parallel((PIPELINE, deploy),
                            *((role, _prefect("gcl", "create", f"gpu:{worker}", "--limit", "1"))
                              for role, worker in GPU_HOSTS.items()))
        cluster.start(PIPELINE, "cpu-worker", *_worker_args("cpu", "cpu-worker"))
        for role, worker in GPU_HOSTS.items():
            cluster.start(role, worker, *_worker_args("gpu", worker))
        yield cluster


@dataclass
class Nightly:
    """What the servers recorded of one nightly-train run (MLflow runs as {run_id, status, artifact_uri, tags})."""

    flow_run: Any
    variant_runs: list[Any]
    artifact_markdown: str
    parent_runs: list[dict]  # the pipeline's MLflow run (one)
    variant_mlflow_runs: dict[str, dict]  # variant -> its MLflow run
    versions: list[dict]  # the registered model's versions
    champion: dict | None  # the version the `champion` alias names


def _mlflow_api(cluster: Cluster, path: str, body: dict | None = None, missing: tuple[int, ...] = (404,)) -> dict:
    """An MLflow REST call (GET, or POST with a JSON `body`); {} when the answer's status is in `missing`.
    Plain urllib: every connection is closed at once, so none outlives the test in the hosts' network."""
    request = urllib.request.Request(f"{cluster.mlflow_url}/api/2.0/mlflow/{path}",
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as error:
        if error.code in missing:
            return {}
        raise AssertionError(f"MLflow {path}: {error.code} {error.read().decode(errors='replace')}") from None


def _search_runs(cluster: Cluster, experiment_id: str, filter_string: str) -> list[dict]:
    found = _mlflow_api(cluster, "runs/search", {"experiment_ids": [experiment_id], "filter": filter_string,
                                                 "max_results": 100})
    return [{**run["info"], "tags": {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}}
            for run in found.get("runs", [])]


def _record(cluster: Cluster, name: str) -> Nightly:
    """Wait (in the hosts' network) for the pipeline run to end, then read its flow runs, its comparison
    artifact, and the MLflow runs, versions and alias of this (fresh) server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.report import COMPARISON_KEY

    with temporary_settings({PREFECT_API_URL: cluster.api_url}), get_client(sync_client=True) as client:
        deadline = time.monotonic() + PIPELINE_S
        pipeline = _pipeline_run(client, name)
        while not (pipeline is not None and pipeline.state is not None and pipeline.state.is_final()):
            if time.monotonic() > deadline or cluster.stopping.is_set():
                raise AssertionError(f"{name} did not finish within {PIPELINE_S} s:\n{cluster.stack.logs(60)}")
            time.sleep(2)
            pipeline = _pipeline_run(client, name)
        variant_runs = [run for run in _variant_runs(client, pipeline.id) if run.name.startswith("train-")]
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[COMPARISON_KEY]), flow_run_id=ArtifactFilterFlowRunId(any_=[pipeline.id])))

    experiment = _mlflow_api(cluster, "experiments/get-by-name?experiment_name=textrnn").get("experiment", {})
    parents = _search_runs(cluster, experiment["experiment_id"], "tags.run_kind = 'pipeline'") if experiment else []
    children = (_search_runs(cluster, experiment["experiment_id"],
                             f"tags.`mlflow.parentRunId` = '{parents[0]['run_id']}'") if len(parents) == 1 else [])
    query = urllib.parse.urlencode({"filter": f"name = '{MODEL_NAME}'"})
    versions = _mlflow_api(cluster, f"model-versions/search?{query}").get("model_versions", [])
    alias = urllib.parse.urlencode({"name": MODEL_NAME, "alias": "champion"})
    # A model without the alias, or no model at all: 400 (INVALID_PARAMETER_VALUE) or 404.
    champion = _mlflow_api(cluster, f"registered-models/alias?{alias}", missing=(400, 404)).get("model_version")
    return Nightly(flow_run=pipeline, variant_runs=variant_runs,
                   artifact_markdown=artifacts[0].data if artifacts else "", parent_runs=parents,
                   variant_mlflow_runs={run["tags"].get("variant"): run for run in children},
                   versions=versions, champion=champion)


@pytest.fixture(scope="module")
def nightly(cluster: Cluster) -> Nightly:
    """nightly-train on three variants, started from the pipeline host as a user would."""
    name = f"multihost-{uuid.uuid4().hex[:8]}"
    overrides = [*_pipeline_overrides(CHECKOUT), "data.sample.train_rows=800"]
    parameters = {"params": "params.yaml", "variants": VARIANTS, "overrides": overrides}
    cluster.run(PIPELINE, *_prefect("deployment", "run", NIGHTLY, "--params", json.dumps(parameters),
                                    "--flow-run-name", name))
    return cluster.on_network(_record, cluster, name, timeout=PIPELINE_S + 120)


# ---------------------------------------------------------------------------------------------- tests


def test_hosts_share_no_paths(cluster: Cluster) -> None:
    """Each host has its own network, hostname, mounts, checkout, PREFECT_HOME and /tmp, and runs its own
    copy of textrnn; the one shared path, the virtualenv, is read-only there."""
    probes = cluster.probes
    for place in ("checkout", "prefect_home", "tmp"):
        for role, probe in probes.items():
            assert probe["markers"][place] == [role], f"{role} sees {probe['markers'][place]} in its {place}"
        assert len({probe["devices"][place] for probe in probes.values()}) == len(ROLES), place
    root_devices = {os.stat(CHECKOUT).st_dev, os.stat("/tmp").st_dev}
    for role, probe in probes.items():
        host = cluster.hosts[role]
        assert probe["hostname"] == host.hostname
        assert probe["filesystems"]["checkout"] == ["tmpfs", host.netns], probe["filesystems"]
        assert probe["filesystems"]["tmp"] == ["tmpfs", f"{host.netns}-tmp"], probe["filesystems"]
        # PREFECT_HOME lies in the host's own checkout; the checkout's copy of src is what it imports.
        assert probe["devices"]["prefect_home"] == probe["devices"]["checkout"]
        assert probe["textrnn"] == str(REPO_ROOT / "src" / "textrnn" / "__init__.py")
        assert probe["textrnn_device"] == probe["devices"]["checkout"]
        assert not root_devices & set(probe["devices"].values())
        assert probe["venv"] == str(VENV) and not probe["venv_writable"]
        # Its one route is the hosts' /24: no default route, nothing beyond the addresses the test made.
        assert probe["routes"] == [host.address.rsplit(".", 1)[0] + ".0/255.255.255.0"], probe["routes"]
    for ns in ("net", "mnt", "uts"):
        own = os.readlink(f"/proc/self/ns/{ns}")
        seen = {probe["namespaces"][ns] for probe in probes.values()}
        assert len(seen) == len(ROLES) and own not in seen, ns
    # The machine's own checkout and /tmp never saw the hosts' files.
    for role in ROLES:
        for place in (CHECKOUT, Path("/tmp"), CHECKOUT / ".prefect"):
            assert not (place / f".multihost-marker-{role}").exists(), place


def test_nightly_run_completes_with_variants_on_both_gpu_hosts(nightly: Nightly, cluster: Cluster) -> None:
    runs = nightly.variant_runs
    assert sorted(run.name for run in runs) == sorted(f"train-{variant}" for variant in VARIANTS), \
        f"{[(run.name, run.state) for run in runs]}\n{cluster.stack.logs(60)}"
    assert all(run.state.is_completed() and run.work_pool_name == "gpu" for run in runs), \
        [(run.name, run.state) for run in runs]
    assert nightly.flow_run.state.is_completed(), f"{nightly.flow_run.state}:\n{cluster.stack.logs(80)}"
    # The pipeline host collected every variant's row: its comparison names each variant and both workers.
    markdown = nightly.artifact_markdown
    assert all(f"| {variant} |" in markdown for variant in VARIANTS), markdown
    assert all(worker in markdown for worker in GPU_WORKERS), markdown
    assert "**champion**" in markdown, markdown


def test_every_variant_ran_on_a_gpu_host_and_is_in_mlflow(nightly: Nightly, cluster: Cluster) -> None:
    assert len(nightly.parent_runs) == 1, nightly.parent_runs  # the pipeline's run, its variants' runs below
    runs = nightly.variant_mlflow_runs
    assert sorted(runs) == sorted(VARIANTS), f"{sorted(runs)}:\n{cluster.stack.logs(60)}"
    gpu_hostnames = {cluster.hosts[role].hostname for role in GPU_HOSTS}
    for variant, run in runs.items():
        assert run["status"] == "FINISHED", (variant, run["status"])
        assert run["tags"].get("textrnn.host") in gpu_hostnames, (variant, run["tags"].get("textrnn.host"))
        assert run["artifact_uri"].startswith("mlflow-artifacts:/"), run["artifact_uri"]
    assert {run["tags"]["textrnn.host"] for run in runs.values()} == gpu_hostnames, "both gpu hosts train"
    # Each variant's model was registered from its run.
    registered = {version["run_id"] for version in nightly.versions}
    assert {run["run_id"] for run in runs.values()} <= registered, nightly.versions


def test_champion_alias_is_set(nightly: Nightly) -> None:
    assert nightly.champion is not None, "no champion alias"
    assert nightly.champion["run_id"] in {run["run_id"] for run in nightly.variant_mlflow_runs.values()}
