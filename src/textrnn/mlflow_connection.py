"""Where MLflow runs go, and talking to it safely: the tracking URI, a fast reachability probe,
credentials kept out of every message, and MLflow errors as one line.

`MLFLOW_TRACKING_URI` when set. Otherwise a local store in the working directory (where the CLI, DVC and
Prefect run): `sqlite:////<abs>/mlflow.db` (four slashes: `sqlite:///` plus an absolute path) with
artifacts under `<abs>/mlartifacts/`. A remote http(s) server is probed once per stage (`GET
<uri>/health`, PROBE_TIMEOUT_S) with any credentials in the URI sent as basic auth, never as part of the
host name; when nothing answers, the stage stops with one line instead of minutes of retries. A sqlite
store's first use (its schema migration) is serialised across processes by a lock.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

# Read by mlflow at import and client creation: no usage reporting, and a dead server must not hold a
# stage for minutes of retries (the default is 7 retries with exponential backoff).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
# mlflow prints "View run at <server URL>" on stdout when a run ends: noise in our output, and the URL
# would carry any credentials in MLFLOW_TRACKING_URI.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

import mlflow  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from textrnn.errors import TextrnnError  # noqa: E402

if TYPE_CHECKING:
    from textrnn.config import Config

log = logging.getLogger("textrnn")

LOCAL_DB, LOCAL_ARTIFACTS = "mlflow.db", "mlartifacts"
PROBE_TIMEOUT_S = 5.0


class TrackingError(TextrnnError):
    """MLflow is unreachable, or a run/model it needs is missing; stated in one line."""


def local_uri(workdir: Path | None = None) -> str:
    """`sqlite:////<abs workdir>/mlflow.db` (workdir = cwd): `sqlite:///` + an absolute path."""
    return f"sqlite:///{(workdir or Path.cwd()).resolve() / LOCAL_DB}"


def tracking_uri(workdir: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` when set, else `local_uri(workdir)`."""
    return os.environ.get("MLFLOW_TRACKING_URI", "").strip() or local_uri(workdir)


def redacted_uri(uri: str) -> str:
    """`uri` without a `user:password@` part, for messages."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


_URL_CREDENTIALS = re.compile(r"(?<=://)[^/\s@]+@")


def redact_text(text: str) -> str:
    """`text` with the `user:password@` part of every URL in it removed (mlflow's own messages quote
    the URI they were given)."""
    return _URL_CREDENTIALS.sub("", text)


def _probe_request(uri: str) -> urllib.request.Request:
    """`GET <uri>/health` with any credentials moved out of the URL into the request: basic auth from the
    URI's `user:password@` or MLFLOW_TRACKING_USERNAME/PASSWORD, or MLFLOW_TRACKING_TOKEN as a bearer
    token, as mlflow itself sends them (a URL with credentials is not a hostname a resolver knows)."""
    parts = urllib.parse.urlsplit(uri)
    url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])).rstrip("/") + "/health"
    request = urllib.request.Request(url)
    user = urllib.parse.unquote(parts.username) if parts.username is not None else os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = (urllib.parse.unquote(parts.password or "") if parts.username is not None
                else os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    if user:
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        request.add_header("Authorization", f"Basic {token}")
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    return request


def _tls_context() -> ssl.SSLContext | None:
    """The TLS settings mlflow itself would use: MLFLOW_TRACKING_INSECURE_TLS / MLFLOW_TRACKING_SERVER_CERT_PATH."""
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return ssl._create_unverified_context()  # noqa: S323 - the user asked mlflow for exactly this
    cert_path = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    return ssl.create_default_context(cafile=cert_path) if cert_path else None


def check_reachable(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise TrackingError (one line) unless an http(s) tracking server answers `GET /health` within
    `timeout_s`.

    Any HTTP answer counts (an auth-enabled server's 401, a proxy's 404 still prove the host is there);
    only no answer at all fails. Credentials never reach the resolver or a message (`_probe_request`,
    `redacted_uri`). Other URI schemes (sqlite, file, databricks) are not probed.
    """
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(_probe_request(uri), timeout=timeout_s, context=_tls_context()):
            pass
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as error:
        reason = redact_text(str(getattr(error, "reason", error)))
        raise TrackingError(
            f"MLflow tracking server {redacted_uri(uri)} is unreachable ({reason}); start it, fix MLFLOW_TRACKING_URI, "
            "or unset it to log to ./mlflow.db (tracking.enabled=false turns tracking off)"
        ) from None


def connect(cfg: Config) -> str:
    """Point mlflow at the tracking URI, check it answers, and return the experiment's id.

    The experiment `tracking.experiment` is created when missing; on the local default store its
    artifacts go to `./mlartifacts/` (a server chooses its own artifact root).
    """
    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    with _one_line_errors(f"MLflow at {redacted_uri(uri)}"), _first_use(cfg, uri):
        client = MlflowClient(uri)  # opens the store: a sqlite one creates or migrates its schema here
        experiment = client.get_experiment_by_name(cfg.tracking.experiment)
        if experiment is not None:
            return experiment.experiment_id
        location = (Path.cwd().resolve() / LOCAL_ARTIFACTS).as_uri() if uri == local_uri() else None
        try:
            return client.create_experiment(cfg.tracking.experiment, artifact_location=location)
        except MlflowException:
            # Another process created it between our lookup and create.
            experiment = client.get_experiment_by_name(cfg.tracking.experiment)
            if experiment is None:
                raise
            return experiment.experiment_id


_MIGRATED: set[str] = set()  # sqlite URIs this process has opened (their schema is up to date)


@contextlib.contextmanager
def _first_use(cfg: Config, uri: str) -> Iterator[None]:
    """Around a process's first use of a sqlite store: hold the `mlflow-db` lock, so that two processes
    starting at once do not both create or migrate its schema (mlflow does not lock; the loser dies on
    "table already exists"). Other stores migrate on their server."""
    if not uri.startswith("sqlite:") or uri in _MIGRATED:
        yield
        return
    from textrnn import locks

    with locks.exclusive("mlflow-db", cfg.paths.cache, wait=True):
        yield
    _MIGRATED.add(uri)


@contextlib.contextmanager
def _one_line_errors(what: str) -> Iterator[None]:
    """Turn mlflow's (often multi-line) errors into a TrackingError with one line, credentials removed."""
    try:
        yield
    except MlflowException as error:
        first = str(error.message).strip().splitlines()[0] if error.message else type(error).__name__
        raise TrackingError(redact_text(f"{what}: {first}")) from error
