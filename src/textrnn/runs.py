"""How an MLflow run ends, and how a run left RUNNING by a dead attempt gets closed.

A stage holds its variant's run open (RUNNING) only while it works. It ends the run

- FINISHED when the stage succeeds,
- KILLED when it is stopped (SIGINT's KeyboardInterrupt, SIGTERM's `textrnn.errors.Terminated`),
- FAILED on any other error,

and the original error always propagates, even when the server is gone and the run cannot be ended.
A process killed outright (SIGKILL, a lost machine) ends nothing; every attempt therefore tags its run
with its pid and host (`textrnn.pid`, `textrnn.host`), and the next attempt on the same variant (or a
pipeline's crash handler) marks such a run KILLED once that process is gone (`close_if_stale`).

Imported only by `textrnn.tracking` (it imports mlflow).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from textrnn import stopping
from textrnn.errors import Terminated

log = logging.getLogger("textrnn")

PID_TAG, HOST_TAG = "textrnn.pid", "textrnn.host"
RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"


def attempt_tags() -> dict[str, str]:
    """Tags naming the process that holds a run open: its pid and host."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def status_for(error: BaseException | None) -> str:
    """The status a run ends with after `error` (None: success)."""
    if error is None:
        return FINISHED
    if isinstance(error, (KeyboardInterrupt, Terminated)):
        return KILLED
    return FAILED


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def is_stale(run: Any) -> bool:
    """True for a RUNNING run whose process is gone: tagged with a pid on this host that no longer runs (or
    is this very process, which holds no run open when it asks), or tagged with no pid at all (left by a
    textrnn that did not tag). A run held open on another host is never judged from here."""
    if run.info.status != RUNNING:
        return False
    tags = run.data.tags
    pid, host = tags.get(PID_TAG), tags.get(HOST_TAG)
    if pid is None:
        return True
    if host != socket.gethostname():
        return False
    return int(pid) == os.getpid() or not _alive(int(pid))


@stopping.deferred()
def set_tags(run_id: str, tags: dict[str, str]) -> None:
    """Tag a run that may be at rest (e.g. link it to the orchestrator's run that made it)."""
    MlflowClient().log_batch(run_id, tags=[mlflow.entities.RunTag(key, value) for key, value in tags.items()])


@stopping.deferred()
def close_if_stale(client: MlflowClient, run_id: str) -> bool:
    """Mark run `run_id` KILLED when `is_stale`; returns whether it did."""
    run = client.get_run(run_id)
    if not is_stale(run):
        return False
    client.set_terminated(run_id, KILLED)
    log.warning("mlflow run=%s was left RUNNING by pid %s, now gone: marked KILLED", run_id,
                run.data.tags.get(PID_TAG, "?"))
    return True


@stopping.deferred()
def _end_active(status: str) -> None:
    """End the active run with `status`; a failure to reach the server is logged, not raised (the next
    attempt's `close_if_stale` closes the run)."""
    try:
        mlflow.end_run(status)
    except Exception as error:  # noqa: BLE001 - the stage's own outcome matters more than this
        log.warning("mlflow run could not be ended %s (%s); the next attempt closes it", status,
                    (str(error).splitlines() or [type(error).__name__])[0][:200])


@contextlib.contextmanager
def ending() -> Iterator[None]:
    """Around the work of an active run: end it FINISHED, KILLED or FAILED (`status_for`) and re-raise."""
    try:
        yield
    except BaseException as error:
        _end_active(status_for(error))
        raise
    with stopping.deferred():
        mlflow.end_run(FINISHED)
