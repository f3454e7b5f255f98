"""Small file helpers shared by the pipeline steps: atomic outputs, content hashes, strict JSON.

Every step writes through these, and they promise three things:

- a failure (an error, a full disk, SIGKILL) never leaves a half-written output next to good ones:
  `atomic_path` publishes one file, `atomic_dir` a whole directory, each only when its block succeeds;
- a directory is replaced only if textrnn made it (it carries the `MARKER` file), and the replacement is
  an atomic exchange, so the target is never missing, not even for an instant;
- staging files left by a killed run (`.<name>.<pid>.<random>.tmp` beside the target) are removed by the
  next write to that target, once their writer is dead.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from textrnn.errors import TextrnnError

# Written into every directory atomic_dir publishes. Constant bytes, so DVC outputs stay reproducible.
MARKER = ".textrnn-output"
MARKER_TEXT = "textrnn made this directory and replaces it whole on its next run; keep your own files elsewhere.\n"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def sha256_file(path: Path | str, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------ staging and clean-up


def _staging_prefix(target: Path) -> str:
    # The writer's pid is part of the name, so the next run can tell a dead writer's leftovers from a
    # live writer's work in progress.
    return f".{target.name}.{os.getpid()}."


def _staging_pattern(target: Path) -> re.Pattern[str]:
    """Names `tempfile` gives with `_staging_prefix` (8 random characters from [a-z0-9_])."""
    return re.compile(rf"^\.{re.escape(target.name)}\.(\d+)\.[a-z0-9_]{{8}}\.tmp$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of ours may be writing the same target
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _remove(path: Path) -> None:
    """Delete a file, link or directory tree (a link is removed, never followed)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale(target: Path | str) -> list[Path]:
    """Remove staging files and directories a dead writer left beside `target`; returns what went.

    Only names of our own pattern whose pid is no longer running are touched: a concurrent writer's
    staging (alive) stays, and nothing a user named is ever matched.
    """
    target = Path(target)
    pattern = _staging_pattern(target)
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in target.parent.iterdir():
            match = pattern.match(entry.name)
            if match and not _alive(int(match.group(1))):
                _remove(entry)
                removed.append(entry)
    return removed


# ----------------------------------------------------------------------------------------- one file


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `target`; move it onto `target` only if the block succeeds.

    Raises TextrnnError when `target` is an existing directory (a file cannot replace it).
    """
    target = Path(target)
    if target.is_dir():
        raise TextrnnError(f"{target}: is a directory; name a file")
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    fd, tmp_name = tempfile.mkstemp(prefix=_staging_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes 0600 files; outputs are shared with workers running as other users.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ directories

_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


@functools.cache
def _libc_renameat2() -> Any:
    """The C library's renameat2 (glibc >= 2.28), or None."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


def _renameat2(source: Path, destination: Path, flags: int) -> bool:
    """Linux renameat2(2). True when done; False where the C library or the file system lacks it
    (then the caller falls back); other failures raise OSError."""
    function = _libc_renameat2()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(destination), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(destination))


def _aside(target: Path) -> Path:
    """Where the rename-aside fallback keeps the old tree while the new one moves in."""
    return target.with_name(f".{target.name}.old")


def is_marked(directory: Path) -> bool:
    """True when `directory` is a real directory (not a link) that textrnn made."""
    return directory.is_dir() and not directory.is_symlink() and (directory / MARKER).is_file()


def recover(target: Path | str) -> None:
    """Finish what a killed rename-aside left: put `.<name>.old` back when `target` is missing, or delete
    it when `target` is there. Only a marked `.old` is touched (a user's own `.x.old` is not ours)."""
    target = Path(target)
    old = _aside(target)
    if not is_marked(old):
        return
    if not os.path.lexists(target):
        os.replace(old, target)
    else:
        shutil.rmtree(old, ignore_errors=True)


def _unowned(target: Path, key: str | None, published: Collection[str] | None) -> str | None:
    """Why `target` may not be replaced, or None when it may.

    textrnn replaces a directory that carries its marker, or one that holds nothing it would lose: no
    entries at all, or (the upgrade path from versions that wrote no marker) only regular files whose
    names the new output also has, i.e. exactly what writing the new files one by one would overwrite.
    `published` is the new output's file names; None (before the work is done) allows only the marker.
    """
    if not os.path.lexists(target) or is_marked(target):
        return None
    setting = f"paths.{key}" if key else "output directory"
    refusal = f"{target}: exists and was not made by textrnn; move it away or choose another {setting}"
    if target.is_symlink() or not target.is_dir():
        return refusal
    entries = list(target.iterdir())
    if not entries:
        return None
    if published is None:
        ours = all(entry.is_file() and not entry.is_symlink() for entry in entries)
        return None if ours else refusal
    if all(entry.is_file() and not entry.is_symlink() and entry.name in published for entry in entries):
        return None
    return refusal


def _publish(staging: Path, target: Path) -> None:
    """Put `staging` at `target` atomically; the old tree (if any) is deleted afterwards."""
    if not os.path.lexists(target):
        if not _renameat2(staging, target, _RENAME_NOREPLACE):
            os.rename(staging, target)
        return
    if _renameat2(staging, target, _RENAME_EXCHANGE):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the old tree
        return
    # No atomic exchange here (not Linux, or a file system without it): move the old tree aside first.
    # A kill between the two renames leaves `target` missing; `recover` puts `.old` back next run.
    old = _aside(target)
    shutil.rmtree(old, ignore_errors=True)
    os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(target: Path | str, key: str | None = None) -> Iterator[Path]:
    """Yield a fresh staging directory beside `target`; it replaces `target` only if the block succeeds.

    Used when several files form one output (the prepared splits; the encoded ids with their tokenizer):
    readers see the old set or the new one, never a mix, and never no directory. `key` names the
    `paths.*` setting in messages. Raises TextrnnError, before the block runs where it can tell, when
    `target` exists and was not made by textrnn (see `_unowned`).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    clean_stale(target)
    if problem := _unowned(target, key, None):
        raise TextrnnError(problem)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(target), suffix=".tmp", dir=target.parent))
    try:
        yield staging
        if problem := _unowned(target, key, {entry.name for entry in staging.iterdir()}):
            raise TextrnnError(problem)
        (staging / MARKER).write_text(MARKER_TEXT, encoding="utf-8")
        os.chmod(staging, 0o777 & ~_UMASK)  # mkdtemp makes 0700 directories
        _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ------------------------------------------------------------------------------------------- JSON


def _non_finite_key(payload: Any, where: str = "") -> str | None:
    """The dotted key of the first NaN/Infinity in `payload`, or None."""
    if isinstance(payload, float) and not math.isfinite(payload):
        return where or "<top level>"
    if isinstance(payload, dict):
        items = ((f"{where}.{key}" if where else str(key), value) for key, value in payload.items())
    elif isinstance(payload, (list, tuple)):
        items = ((f"{where}[{index}]", value) for index, value in enumerate(payload))
    else:
        return None
    for child, value in items:
        if found := _non_finite_key(value, child):
            return found
    return None


def write_json(path: Path | str, payload: Any) -> None:
    """Write `payload` as indented JSON, atomically. Raises TextrnnError naming the file and key for a
    NaN or Infinity, which JSON cannot hold (Python would write a file other tools cannot read)."""
    try:
        text = json.dumps(payload, indent=2, sort_keys=False, allow_nan=False)
    except ValueError:
        key = _non_finite_key(payload)
        if key is None:
            raise  # not a NaN: a bug (e.g. a circular reference), not the user's to fix
        raise TextrnnError(f"{path}: {key} is not a finite number; refusing to write invalid JSON") from None
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))
