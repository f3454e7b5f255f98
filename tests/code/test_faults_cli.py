"""The command line's own promises under faults: undecodable arguments, a stop signal, a read-only
output directory. Each case runs the real `textrnn` process (tests/fault_kit.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fault_kit import (PARAMS, assert_one_line_error, assert_unchanged, cli, fault, full_disk_at, read_only, snapshot,
                       spawn_cli)

TINY = ("--set", "data.source=sample", "--set", "data.sample.train_rows=400", "--set", "data.sample.test_rows=80",
        "--set", "tracking.enabled=false", "--set", "train.threads=1")


def _argv_bytes(*args: bytes) -> subprocess.CompletedProcess:
    """The CLI run with raw byte arguments, as a shell passes a file name that is not UTF-8."""
    return subprocess.run([sys.executable.encode(), b"-m", b"textrnn.cli", *args], capture_output=True, text=True,
                          errors="backslashreplace", timeout=120)


@fault(10, "a text argument that is not UTF-8 (`textrnn predict -m rnn $'caf\\xe9'`)",
       "error: argument 4 (...) is not valid UTF-8, exit 2")
def test_predict_argument_not_utf8() -> None:
    assert_one_line_error(_argv_bytes(b"predict", b"-m", b"rnn", b"caf\xe9"), "argument 4", "not valid UTF-8")


@fault(10, "an override that is not UTF-8 (`--set data.hf_name=\\xff`)", "error: argument 3 (...) is not valid UTF-8, exit 2")
def test_override_not_utf8() -> None:
    assert_one_line_error(_argv_bytes(b"prepare", b"--set", b"data.hf_name=\xff"), "argument 3", "not valid UTF-8")


@pytest.fixture
def encoded_workdir(tmp_path: Path) -> Path:
    """A working directory with the tiny sample prepared and encoded by the real CLI."""
    for step in ("prepare", "encode"):
        result = cli(tmp_path, step, "--params", str(PARAMS), *TINY)
        assert result.returncode == 0, result.stderr
    return tmp_path


@fault(11, "SIGTERM to `textrnn train` mid-epoch",
       "error: stopped by SIGTERM; exit 143; no temporary file left; prepared and encoded data intact",
       kept="data/")
def test_sigterm_during_training_stops_cleanly(encoded_workdir: Path) -> None:
    before = snapshot(encoded_workdir / "data")
    process = spawn_cli(encoded_workdir, "-V", "train", "--variant", "bilstm", "--params", str(PARAMS), *TINY,
                        "--set", "train.epochs=50", "--no-progress")
    try:
        # Wait until training really runs (the first epoch line is logged at -V), then stop it.
        deadline = time.monotonic() + 120
        seen = ""
        while "epoch variant=bilstm" not in seen and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line and process.poll() is not None:
                break
            seen += line
        assert "epoch variant=bilstm" in seen, seen
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert errors == ["error: stopped by SIGTERM; outputs written so far are kept"], stderr
    assert "Traceback" not in stderr
    leftovers = [p for p in encoded_workdir.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers
    assert_unchanged(before, encoded_workdir / "data")


@fault(10, "`textrnn predict --output` into a read-only directory",
       "error: out/...: Read-only file system, exit 2; nothing else written", kept="the read-only directory")
def test_predict_output_on_a_read_only_directory(encoded_workdir: Path) -> None:
    trained = cli(encoded_workdir, "train", "--variant", "bag", "--params", str(PARAMS), *TINY, "--set", "train.epochs=1",
                  "--no-progress")
    assert trained.returncode == 0, trained.stderr
    exported = cli(encoded_workdir, "export", "--variant", "bag", "--params", str(PARAMS), *TINY)
    assert exported.returncode == 0, exported.stderr
    out_dir = encoded_workdir / "out"
    out_dir.mkdir()
    (out_dir / "old.jsonl").write_text('{"kept": true}\n')
    before = snapshot(out_dir)
    with read_only(out_dir):
        result = cli(encoded_workdir, "predict", "-m", "bag", "--params", str(PARAMS), *TINY, "--no-progress",
                     "--output", "out/predictions.jsonl", "some text")
    assert_one_line_error(result, "out", "Read-only file system")
    assert_unchanged(before, out_dir)
    assert not (out_dir / "predictions.jsonl").exists()


@pytest.mark.parametrize("step", ["prepare", "encode"])
@fault(10, "`textrnn prepare` / `encode` on a full disk (a real tmpfs under data/ with room for one copy only)",
       "error: data/...: No space left on device, exit 2; the previous prepared and encoded data unchanged",
       kept="data/")
def test_data_steps_on_a_full_disk_keep_the_previous_data(encoded_workdir: Path, step: str) -> None:
    data = encoded_workdir / "data"
    used = sum(path.stat().st_size // 4096 + 1 for path in data.rglob("*") if path.is_file())
    # Room for what is there plus a few pages: not for the second copy a step stages beside its output.
    with full_disk_at(data, f"{(used + 8) * 4096}") as disk:
        before = snapshot(disk)
        result = cli(encoded_workdir, step, "--params", str(PARAMS), *TINY)
        assert_one_line_error(result, "No space left on device")
        assert_unchanged(before, disk)
        assert not [path for path in disk.rglob("*") if path.name.endswith(".tmp")]
