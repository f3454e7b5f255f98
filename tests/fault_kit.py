"""What the fault-and-bad-input suite (tests/*/test_faults_*.py) shares: the `fault` mark that feeds the
README's Reliability table, real faults (a small tmpfs, a read-only bind mount, real CLI processes),
and the check that nothing already written was lost.

Every fault test:
- is marked `@fault(item, case, outcome)`: `item` is the issue-12 number it reproduces (1-15, 0 for
  cases beyond the issue), `case` what the test does to textrnn, `outcome` what the user then sees
  (README table rows come from these marks: tests/reliability.py), and `kept` what it proves intact;
- asserts the outcome (usually `assert_one_line_error`) and, where outputs existed, that they are
  byte-for-byte as before (`snapshot` before, `assert_unchanged` after).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PARAMS = REPO_ROOT / "params.yaml"


def fault(item: int, case: str, outcome: str, kept: str = ""):
    """Mark a test as one row of the Reliability table (see the module docstring); `kept` names what the
    test asserts is byte-for-byte intact afterwards (e.g. "data/prepared"), empty when nothing existed."""
    return pytest.mark.fault(item=item, case=case, outcome=outcome, kept=kept)


def snapshot(root: Path | str) -> dict[str, str]:
    """{relative path: sha256} of every file under `root` (symlinks not followed)."""
    root = Path(root)
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def assert_unchanged(before: dict[str, str], root: Path | str, ignore: Sequence[str] = ()) -> None:
    """Every file in `before` is still under `root` with the same bytes (files may be added, e.g. logs,
    unless they sit where `before` had files; paths starting with an `ignore` prefix are skipped)."""
    after = snapshot(root)
    lost = [p for p in before if not p.startswith(tuple(ignore)) and after.get(p) != before[p]]
    assert not lost, f"changed or lost: {lost[:10]}"


def cli(cwd: Path | str, *args: str, env: dict[str, str] | None = None, timeout: float = 300,
        stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run the real `textrnn` CLI in a new process with working directory `cwd`; output captured as text
    (undecodable bytes escaped)."""
    return subprocess.run(
        [sys.executable, "-m", "textrnn.cli", *args], cwd=cwd, env={**os.environ, **(env or {})},
        input=stdin, capture_output=True, text=True, errors="backslashreplace", timeout=timeout,
    )


def spawn_cli(cwd: Path | str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start the real CLI in the background (for SIGKILL/SIGTERM and concurrency tests); caller waits."""
    return subprocess.Popen(
        [sys.executable, "-m", "textrnn.cli", *args], cwd=cwd, env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="backslashreplace",
    )


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit status 2 and exactly one non-blank line on stderr, `error: ...`, holding every fragment; no
    traceback anywhere. `result` is a CompletedProcess (or a typer CliRunner Result). Returns the line."""
    stderr = result.stderr if isinstance(result, subprocess.CompletedProcess) else result.output
    stdout = result.stdout if isinstance(result, subprocess.CompletedProcess) else ""
    code = result.returncode if isinstance(result, subprocess.CompletedProcess) else result.exit_code
    assert "Traceback" not in stderr + stdout, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, f"exit {code}: {stderr}"
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextlib.contextmanager
def small_tmpfs(size: str = "1m") -> Iterator[Path]:
    """A real tmpfs of `size` (a full disk on demand); skips the test where mounting is not allowed."""
    mountpoint = Path(tempfile.mkdtemp(prefix="textrnn-tmpfs-"))
    if not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)):
        mountpoint.rmdir()
        pytest.skip("cannot mount a tmpfs here (needs root): the full-disk case is not tried")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
        shutil.rmtree(mountpoint, ignore_errors=True)


@contextlib.contextmanager
def read_only(directory: Path | str) -> Iterator[Path]:
    """`directory` bind-mounted read-only onto itself (root ignores permission bits, not a ro mount);
    skips the test where bind mounts are not allowed."""
    directory = Path(directory)
    if not _mount("--bind", str(directory), str(directory)):
        pytest.skip("cannot bind-mount here (needs root): the read-only case is not tried")
    try:
        if not _mount("-o", "remount,ro,bind", str(directory)):
            pytest.skip("cannot remount read-only here")
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True)


@contextlib.contextmanager
def full_disk_at(target: Path, size: str):
    """A real tmpfs of `size` mounted at `target` (inside the workspace: outputs must resolve there),
    holding a copy of what `target` held; `target` is restored afterwards."""
    saved = target.with_name(target.name + ".saved")
    if target.exists():
        shutil.copytree(target, saved)
    target.mkdir(parents=True, exist_ok=True)
    with small_tmpfs(size) as disk:
        if not _mount("--bind", str(disk), str(target)):
            pytest.skip("cannot bind-mount here (needs root): the full-disk case is not tried")
        try:
            if saved.exists():
                for path in saved.iterdir():
                    (shutil.copytree if path.is_dir() else shutil.copy2)(path, target / path.name)
            yield target
        finally:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)
