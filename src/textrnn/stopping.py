"""Stop signals (SIGTERM, SIGINT) unwind the stack, except inside a store write, where they wait for its end.

A stop signal raises `textrnn.errors.Terminated` (SIGTERM) or KeyboardInterrupt (SIGINT) in the main thread,
so context managers end the MLflow run KILLED and remove their temporary files. Raised in the middle of a
sqlite transaction, though, it leaves that transaction's lock held by a connection nobody will commit, and
ending the run KILLED then fails with "database is locked". Blocking the signal with pthread_sigmask does
not help: the kernel hands a process-directed signal to any thread that does not block it (torch's and
MLflow's threads) and CPython then runs the Python handler in the main thread regardless. So the handler
itself decides: inside `deferred()` it records the signal, and the block's end raises it.

Only the CLI installs the handler (`install`); elsewhere (a Prefect worker, a test) `deferred` changes
nothing and the host's own handlers apply.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from textrnn.errors import Terminated

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_depth = 0  # how many deferred() blocks the main thread is inside
_pending: int | None = None  # a stop signal that arrived inside one


def install() -> None:
    """Make SIGTERM and SIGINT stop the process through `raise_stop` (called from the main thread)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_stop_signal)


def raise_stop(signum: int) -> None:
    """Raise what a stop signal means: KeyboardInterrupt for SIGINT (Ctrl-C), Terminated otherwise."""
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def _on_stop_signal(signum: int, frame: Any) -> None:
    global _pending
    if _depth:
        _pending = signum
        return
    raise_stop(signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold a stop signal that arrives during the block until the block ends (also usable as a decorator).

    Python runs signal handlers only in the main thread, so only the main thread's blocks count; other
    threads are never interrupted by a signal anyway."""
    global _depth, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending is not None:
            signum, _pending = _pending, None
            raise_stop(signum)
