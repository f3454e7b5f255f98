"""One writer at a time: exclusive locks per (working directory, variant) and for the data steps.

`exclusive(name, cache_dir)` holds `flock(LOCK_EX)` on `<cache_dir>/locks/<name>.lock` for the length of
a `with` block. The kernel drops the lock when its holder exits, however it exits (SIGKILL included),
so a killed run never leaves a stale lock behind; the file itself stays and is reused. The holder
writes its pid, command line and start time into the file, so a second writer can say who holds it.

Names in use: `variant-<name>` (train, export, evaluate, register of one variant) and `data` (prepare,
encode). `variant(cfg, name)` and `data(cfg)` spell them once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from textrnn.errors import TextrnnError

if TYPE_CHECKING:
    from textrnn.config import Config

# How long a refused writer re-reads an empty lock file: the holder writes its details just after it
# locks, so a reader can arrive in between.
_HOLDER_WRITE_GRACE_S = 0.5


class LockedError(TextrnnError):
    """Another process is writing the same outputs; the message names it."""


def lock_path(name: str, cache_dir: Path | str) -> Path:
    return Path(cache_dir) / "locks" / f"{name}.lock"


def _describe(name: str) -> str:
    """What a lock protects, in the words of the refusal message."""
    if name.startswith("variant-"):
        return f"variant {name.removeprefix('variant-')} is"
    if name == "data":
        return "the prepared and encoded data are"
    return f"{name} is"


def _command() -> str:
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program in ("cli.py", "__main__.py", "-m", "-c"):
        program = "textrnn"
    command = next((word for word in sys.argv[1:] if not word.startswith("-")), "")
    return f"{program} {command}".strip()  # the program and its command: `textrnn train`


def _holder(handle) -> dict:
    """The holder's details as it wrote them ({} when not yet written or unreadable)."""
    deadline = time.monotonic() + _HOLDER_WRITE_GRACE_S
    while True:
        handle.seek(0)
        text = handle.read()
        if text.strip() or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _refusal(name: str, holder: dict) -> str:
    who = f"pid {holder['pid']}" if "pid" in holder else "another process"
    command = f" ({holder['command']})" if holder.get("command") else ""
    since = f" since {holder['since']}" if holder.get("since") else ""
    return f"{_describe(name)} being written by {who}{command}{since}; wait for it or pass --wait"


@contextlib.contextmanager
def exclusive(name: str, cache_dir: Path | str, wait: bool = False) -> Iterator[Path]:
    """Hold the exclusive lock `name` under `cache_dir/locks/` for the block; yields the lock file.

    Raises LockedError at once, naming the holder's pid and command, when another process (or another
    open of it in this process) holds it, unless `wait`, which blocks until it is free.
    """
    path = lock_path(name, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Opened without truncating: the holder's details must survive a refused writer's open.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    with os.fdopen(fd, "r+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockedError(_refusal(name, _holder(handle))) from None
        try:
            since = datetime.now(timezone.utc).isoformat(timespec="seconds")
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "command": _command(), "since": since}) + "\n")
            handle.flush()
            yield path
        finally:
            # Clear the details before unlocking, so no reader names a finished writer.
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)


def variant(cfg: Config, name: str, wait: bool = False) -> contextlib.AbstractContextManager[Path]:
    """The lock of variant `name`'s outputs (train, export, evaluate, register)."""
    return exclusive(f"variant-{name}", cfg.paths.cache, wait)


def data(cfg: Config, wait: bool = False) -> contextlib.AbstractContextManager[Path]:
    """The lock of the data outputs (prepare, encode)."""
    return exclusive("data", cfg.paths.cache, wait)
