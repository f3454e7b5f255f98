"""Real MLflow processes on loopback for the tracking tests: a tracking server and a model server.

Each runs in its own process group (`start_new_session`), so stopping it by PID also stops the workers
it forks (uvicorn). Ports are free ones picked on 127.0.0.1; nothing listens beyond loopback.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent  # mlflow, and the uvicorn that `mlflow models serve` execs by name


def free_port() -> int:
    """A TCP port that nothing listens on right now (127.0.0.1)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


@dataclass
class Server:
    """A started server process: its base URL, process and log file."""

    url: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_until_up(self, path: str, timeout_s: float) -> None:
        """Poll GET url+path until it answers 200; raise with the log's tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.url}: server exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{self.url}{path} did not answer within {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL it if it is still there after 10 s."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass


def _start(args: list[str], log_path: Path, env: dict[str, str], url: str) -> Server:
    handle = open(log_path, "wb")
    try:
        process = subprocess.Popen(
            args, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=log_path.parent
        )
    finally:
        handle.close()
    return Server(url=url, process=process, log_path=log_path)


def start_tracking_server(root: Path, timeout_s: float = 120, backend_store_uri: str | None = None, *,
                          app_name: str | None = None, extra_env: Mapping[str, str] | None = None,
                          launcher: Sequence[str] | None = None) -> Server:
    """`mlflow server` with proxied artifacts under `root` and a sqlite backend there too, unless
    `backend_store_uri` names another (e.g. PostgreSQL); returns once /health answers.

    `app_name` is passed as `--app-name` (e.g. "basic-auth", whose settings and secrets come through
    `extra_env`: MLFLOW_AUTH_CONFIG_PATH, MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY;
    /health stays open, so the readiness check needs no credentials). `launcher` replaces `mlflow server`
    at the start of the command line with a program that execs it (e.g. infra/docker/mlflow-server.sh);
    `mlflow` is on its PATH.
    """
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [
        *(launcher or (str(BIN / "mlflow"), "server")),
        "--backend-store-uri", backend_store_uri or f"sqlite:///{(root / 'mlflow.db').resolve()}",
        "--serve-artifacts", "--artifacts-destination", str((root / "artifacts").resolve()),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        *(("--app-name", app_name) if app_name else ()),
    ]
    # Job execution (huey workers for GenAI features we do not use) would add eight processes.
    env = _env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **(extra_env or {}))
    server = _start(args, root / "server.log", env, f"http://127.0.0.1:{port}")
    server.wait_until_up("/health", timeout_s)
    return server


def start_model_server(model_uri: str, tracking_uri: str, log_dir: Path, timeout_s: float = 120) -> Server:
    """`mlflow models serve -m model_uri --env-manager local`; returns once /ping answers."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [
        str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    env = _env(MLFLOW_TRACKING_URI=tracking_uri)
    server = _start(args, log_dir / "model-server.log", env, f"http://127.0.0.1:{port}")
    server.wait_until_up("/ping", timeout_s)
    return server
