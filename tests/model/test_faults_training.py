"""Faults in training, export, evaluation, registration and MLflow runs (issue 12, items 3, 4, 6, 7, 8, 10,
11, 12 and lineage), each tried on the real `textrnn` process in its own working directory.

The workspaces hold the tiny sample (400 train rows, one epoch); tracking is off except where the case is
about MLflow, which then logs to a sqlite store inside the workspace (or to a real `mlflow server`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import private_copy
from fault_kit import (PARAMS, assert_one_line_error, assert_unchanged, cli, fault, full_disk_at, read_only, snapshot,
                       spawn_cli)

TINY = ["data.source=sample", "data.sample.train_rows=400", "data.sample.test_rows=80", "tracking.enabled=false",
        "train.epochs=1", "train.threads=1"]
TRACKED = ["tracking.enabled=true"]
MODEL_DIR = Path("models/lstm")
EXPORT_FILES = ("model.onnx", "export.json", "tokenizer.json")


def args(*command: str, sets: tuple[str, ...] | list[str] = ()) -> list[str]:
    """A CLI command line with the tiny settings and `sets` as `--set` overrides."""
    overrides = [arg for item in [*TINY, *sets] for arg in ("--set", item)]
    return [*command, "--params", str(PARAMS), *overrides]


def run(workdir: Path, *command: str, sets=(), env=None) -> subprocess.CompletedProcess:
    return cli(workdir, *args(*command, sets=sets), env=env)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr
    return result


def local_env(workdir: Path) -> dict[str, str]:
    """Environment for a tracked run into the workspace's own sqlite store."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("MLFLOW_TRACKING_URI", "TEXTRNN_MLFLOW_PARENT_RUN_ID", "DVC_EXP_NAME")}
    return {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir.resolve() / 'mlflow.db'}"}


def runs_of(workdir: Path, uri: str | None = None) -> list:
    """Every MLflow run in the workspace's store (or at `uri`), newest first."""
    from mlflow import MlflowClient

    client = MlflowClient(uri or f"sqlite:///{workdir.resolve() / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, order_by=["attributes.start_time DESC"]) if experiments else []


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120, pattern: str | None = None) -> None:
    """Poll until `path` exists (or a file matching `pattern` under it), or fail if `process` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (list(path.glob(pattern)) if pattern else path.exists()):
            return
        if process.poll() is not None:
            raise AssertionError(f"process ended ({process.returncode}) before {path}: {process.stderr.read()}")
        time.sleep(0.01)
    raise AssertionError(f"{path} did not appear within {timeout} s")


def kill(process: subprocess.Popen, signum: int = signal.SIGKILL) -> tuple[str, str]:
    process.send_signal(signum)
    try:
        return process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()


# ------------------------------------------------------------------------------------ workspaces


@pytest.fixture(scope="module")
def encoded_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("tiny-encoded")
    ok(run(workdir, "prepare"))
    ok(run(workdir, "encode"))
    return workdir


@pytest.fixture(scope="module")
def exported_tiny(encoded_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lstm trained (with its checkpoint), exported and evaluated, untracked."""
    workdir = tmp_path_factory.mktemp("tiny-exported") / "ws"
    shutil.copytree(encoded_tiny, workdir)
    for step in ("train", "export", "evaluate"):
        ok(run(workdir, step, "--variant", "lstm", *(["--no-progress"] if step == "train" else [])))
    return workdir


@pytest.fixture
def encoded(encoded_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return private_copy(encoded_tiny, tmp_path, monkeypatch)


@pytest.fixture
def exported(exported_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return private_copy(exported_tiny, tmp_path, monkeypatch)


def evil_pickle(marker: Path) -> bytes:
    """A torch file whose unpickling would create `marker` (as any os.system payload would run)."""
    import io

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    buffer = io.BytesIO()
    torch.save({"state": Payload()}, buffer)
    return buffer.getvalue()


# --------------------------------------------------------------------------- 3: export never loses


@fault(3, "`textrnn export` on a full disk (a real 1 MiB-short tmpfs under models/lstm) over a good export",
       "error: models/lstm/model.onnx: No space left on device, exit 2; previous model.onnx, export.json, "
       "tokenizer.json unchanged", kept="models/lstm")
def test_export_on_a_full_disk_keeps_the_previous_export(exported: Path) -> None:
    model_dir = exported / MODEL_DIR
    used = sum(path.stat().st_size // 4096 + 1 for path in model_dir.iterdir())
    # Room for what is there and a few pages more: not for a second model.onnx.
    with full_disk_at(model_dir, f"{(used + 8) * 4096}") as disk:
        before = snapshot(disk)
        result = run(exported, "export", "--variant", "lstm")
        assert_one_line_error(result, "model.onnx", "No space left on device")
        assert_unchanged(before, disk)
        assert not [path for path in disk.iterdir() if path.name.endswith(".tmp")]


@fault(3, "SIGKILL of `textrnn export` while it writes the new graph", "previous model.onnx, export.json, "
       "tokenizer.json byte-for-byte unchanged; evaluate still runs", kept="models/lstm")
def test_sigkill_mid_export_keeps_the_previous_export(exported: Path) -> None:
    before = snapshot(exported / MODEL_DIR)
    process = spawn_cli(exported, *args("export", "--variant", "lstm"))
    wait_for(exported / MODEL_DIR, process, pattern=".model.onnx.*.tmp")
    kill(process)
    assert_unchanged(before, exported / MODEL_DIR)
    ok(run(exported, "evaluate", "--variant", "lstm"))


@fault(3, "SIGTERM of `textrnn export` while it writes the new graph",
       "error: stopped by SIGTERM, exit 143; no temporary file; previous export unchanged", kept="models/lstm")
def test_sigterm_mid_export_keeps_the_previous_export_and_no_temp_file(exported: Path) -> None:
    before = snapshot(exported / MODEL_DIR)
    process = spawn_cli(exported, *args("export", "--variant", "lstm"))
    wait_for(exported / MODEL_DIR, process, pattern=".model.onnx.*.tmp")
    _, stderr = kill(process, signal.SIGTERM)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    assert_unchanged(before, exported / MODEL_DIR)
    assert not [path for path in (exported / MODEL_DIR).iterdir() if path.name.endswith(".tmp")]


# ------------------------------------------------------------------ 4: no old model under a new run


@fault(4, "a retrain with another learning rate SIGKILLed after its first checkpoint, then export",
       "the old model.pt, export, train.json and eval.json are gone; export: error: ...model.pt: model not found")
def test_a_killed_retrain_leaves_no_old_model(exported: Path) -> None:
    process = spawn_cli(exported, *args("train", "--variant", "lstm", "--no-progress",
                                        sets=["train.learning_rate=0.002", "train.epochs=50", "train.patience=50"]))
    # The old checkpoint is removed at the start (not resuming): the new one marks the first epoch done.
    deadline = time.monotonic() + 60
    while (exported / MODEL_DIR / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    wait_for(exported / MODEL_DIR / "checkpoint.pt", process)
    kill(process)
    assert process.returncode == -signal.SIGKILL
    for stale in ("models/lstm/model.pt", "models/lstm/model.onnx", "models/lstm/export.json",
                  "metrics/lstm/train.json", "metrics/lstm/eval.json", "plots/lstm/confusion_matrix.png"):
        assert not (exported / stale).exists(), stale
    assert_one_line_error(run(exported, "export", "--variant", "lstm"), "model.pt", "not found")
    assert_one_line_error(run(exported, "evaluate", "--variant", "lstm"), "run `textrnn export` first")


@fault(4, "two `textrnn train --variant lstm` started at once in one directory",
       "the second: error: variant lstm is being written by pid N (textrnn train), exit 2; the first finishes",
       kept="the first run's outputs")
def test_two_concurrent_trains_of_one_variant(encoded: Path) -> None:
    # Long enough that the first run still trains while a second process starts, even on a loaded machine
    # (25 epochs once ended first in a full run).
    long = ["train.epochs=100", "train.patience=100"]
    first = spawn_cli(encoded, *args("train", "--variant", "lstm", "--no-progress", sets=long))
    wait_for(encoded / MODEL_DIR / "checkpoint.pt", first)
    second = run(encoded, "train", "--variant", "lstm", "--no-progress")
    assert first.poll() is None, "the first run ended before the second tried"
    assert_one_line_error(second, "variant lstm", f"pid {first.pid}")
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    summary = json.loads((encoded / "metrics/lstm/train.json").read_text())
    assert summary["epochs_run"] == 100 and (encoded / MODEL_DIR / "model.pt").is_file()


@fault(4, "two tracked `textrnn train` (lstm, gru) started at once on a fresh sqlite MLflow store",
       "both finish; one store, two FINISHED runs (the schema is created once, under a lock)")
def test_concurrent_first_starts_on_a_fresh_sqlite_store(encoded: Path) -> None:
    env = local_env(encoded)
    processes = [spawn_cli(encoded, *args("train", "--variant", v, "--no-progress", sets=TRACKED), env=env)
                 for v in ("lstm", "gru")]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    assert sorted(run.info.status for run in runs_of(encoded)) == ["FINISHED", "FINISHED"]


# -------------------------------------------------------------------------- 6: safe checkpoints


@fault(6, "`textrnn train --resume` with a checkpoint.pt that holds a code-running pickle",
       "error: models/lstm/checkpoint.pt: refused: holds objects other than tensors..., exit 2; the code never runs")
def test_malicious_checkpoint_is_refused_and_never_run(exported: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (exported / MODEL_DIR / "checkpoint.pt").write_bytes(evil_pickle(marker))
    before = snapshot(exported / "models")
    result = run(exported, "train", "--variant", "lstm", "--resume", "--no-progress")
    assert_one_line_error(result, "checkpoint.pt", "refused")
    assert not marker.exists()
    assert_unchanged(before, exported / "models")


@fault(6, "`textrnn export` of a model.pt that holds a code-running pickle",
       "error: models/lstm/model.pt: refused ..., exit 2; the code never runs; the previous export is kept",
       kept="models/lstm")
def test_malicious_model_is_refused_and_never_run(exported: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (exported / MODEL_DIR / "model.pt").write_bytes(evil_pickle(marker))
    before = snapshot(exported / MODEL_DIR)
    assert_one_line_error(run(exported, "export", "--variant", "lstm"), "model.pt", "refused")
    assert not marker.exists()
    assert_unchanged(before, exported / MODEL_DIR)


def test_checkpoints_load_with_weights_only(exported: Path) -> None:
    payload = torch.load(exported / MODEL_DIR / "checkpoint.pt", weights_only=True)
    assert payload["lineage"]["config"]["train"]["learning_rate"] == 0.001
    assert torch.load(exported / MODEL_DIR / "model.pt", weights_only=True)["lineage"]["inputs"]


# --------------------------------------------------------------------------- 7: finite training


@pytest.mark.parametrize("variant", ["lstm", "bag"])
@fault(7, "`textrnn train --set train.learning_rate=1e30` (finite, diverges: loss 1e30 or NaN)",
       "error: training diverged: <variant> epoch 1/1, step N: loss is ..., exit 2; no model.pt; no JSON with NaN")
def test_divergence_stops_training_without_a_model(exported: Path, variant: str) -> None:
    result = run(exported, "train", "--variant", variant, "--no-progress", sets=["train.learning_rate=1e30"])
    assert_one_line_error(result, "training diverged", f"{variant} epoch 1/1", "step ")
    assert not (exported / "models" / variant / "model.pt").exists()
    assert not (exported / "metrics" / variant / "train.json").exists()
    for path in exported.rglob("*.json"):
        text = path.read_text()
        assert "NaN" not in text and "Infinity" not in text, path
        json.loads(text)


# ----------------------------------------------------------------------- 8: resume refuses changes


@pytest.mark.parametrize("changed", ["train.learning_rate=0.01", "seed=7", "variants.lstm.hidden=4"])
@fault(8, "`textrnn train --resume` after changing a training key (learning rate, seed, the variant's config)",
       "error: ...checkpoint.pt: cannot resume, the training config changed: <keys>, exit 2; nothing changed",
       kept="models/, metrics/")
def test_resume_refuses_a_changed_training_key(exported: Path, changed: str) -> None:
    before = snapshot(exported)
    result = run(exported, "train", "--variant", "lstm", "--resume", "--no-progress", sets=[changed])
    key = changed.split("=")[0].replace("variants.lstm.", "variant.")
    assert_one_line_error(result, "checkpoint.pt", "cannot resume", key)
    assert_unchanged(before, exported, ignore=(".cache/",))


@fault(8, "`textrnn train --resume` after the data were re-encoded with another vocabulary",
       "error: ...: changed since checkpoint.pt was written (or the config key), exit 2", kept="models/")
def test_resume_refuses_changed_inputs(exported: Path) -> None:
    ok(run(exported, "encode", sets=["tokenizer.vocab_size=300"]))
    before = snapshot(exported / "models")
    result = run(exported, "train", "--variant", "lstm", "--resume", "--no-progress", sets=["tokenizer.vocab_size=300"])
    assert_one_line_error(result, "checkpoint.pt")
    assert_unchanged(before, exported / "models")


# --------------------------------------------------------------------- 10: one line, not a traceback


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": os.urandom(4096)}[how])


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
@fault(10, "`textrnn train --resume` with a truncated / zero-byte / garbage checkpoint.pt",
       "error: models/lstm/checkpoint.pt: not a readable checkpoint, truncated or corrupt, exit 2", kept="models/")
def test_damaged_checkpoint_is_one_line(exported: Path, how: str) -> None:
    _damage(exported / MODEL_DIR / "checkpoint.pt", how)
    before = snapshot(exported / "models")
    result = run(exported, "train", "--variant", "lstm", "--resume", "--no-progress")
    assert_one_line_error(result, "checkpoint.pt")
    assert_unchanged(before, exported / "models")


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
@fault(10, "`textrnn export` of a truncated / zero-byte / garbage model.pt",
       "error: models/lstm/model.pt: not a readable model, truncated or corrupt, exit 2; previous export kept",
       kept="models/lstm")
def test_damaged_model_is_one_line(exported: Path, how: str) -> None:
    _damage(exported / MODEL_DIR / "model.pt", how)
    before = snapshot(exported / MODEL_DIR)
    assert_one_line_error(run(exported, "export", "--variant", "lstm"), "model.pt")
    assert_unchanged(before, exported / MODEL_DIR)


@fault(10, "`textrnn train` with models/ on a full disk (a real 64 KiB tmpfs)",
       "error: models/lstm/...: cannot write (No space left on device), exit 2", kept="data/")
def test_train_on_a_full_disk_is_one_line(encoded: Path) -> None:
    before = snapshot(encoded / "data")
    with full_disk_at(encoded / "models", "64k") as disk:
        result = run(encoded, "train", "--variant", "lstm", "--no-progress")
        assert_one_line_error(result, "models/lstm/", "No space left on device")
        assert not [path for path in disk.rglob("*") if path.name.endswith(".tmp")]
    assert_unchanged(before, encoded / "data")


@fault(10, "`textrnn train` with a read-only models/ directory (a read-only bind mount)",
       "error: models/lstm/...: Read-only file system, exit 2; nothing in it changed", kept="models/")
def test_train_into_a_read_only_directory_is_one_line(exported: Path) -> None:
    before = snapshot(exported / "models")
    with read_only(exported / "models"):
        result = run(exported, "train", "--variant", "lstm", "--no-progress")
    assert_one_line_error(result, "models/lstm/", "Read-only file system")
    assert_unchanged(before, exported / "models")


# ---------------------------------------------------------------------------- 11: run lifecycle


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@fault(11, "SIGTERM / SIGINT (Ctrl-C) of a tracked `textrnn train`", "the MLflow run ends KILLED; exit 128 + signal")
def test_a_stop_signal_ends_the_run_killed(encoded: Path, signum: int) -> None:
    env = local_env(encoded)
    process = spawn_cli(encoded, *args("train", "--variant", "lstm", "--no-progress",
                                       sets=[*TRACKED, "train.epochs=50", "train.patience=50"]), env=env)
    wait_for(encoded / MODEL_DIR / "checkpoint.pt", process)
    _, stderr = kill(process, signum)
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    assert [run.info.status for run in runs_of(encoded)] == ["KILLED"]


@fault(11, "a tracked `textrnn train --variant lstmm` (a typo)",
       "error: unknown variant 'lstmm' (known: ...), exit 2; no MLflow run is created")
def test_a_typo_in_the_variant_creates_no_run(encoded: Path) -> None:
    result = run(encoded, "train", "--variant", "lstmm", "--no-progress", sets=TRACKED, env=local_env(encoded))
    assert_one_line_error(result, "unknown variant 'lstmm'")
    assert not (encoded / "mlflow.db").exists() or not runs_of(encoded)


@fault(11, "a tracked train SIGKILLed mid-epoch (run left RUNNING), then the next train of that variant",
       "the dead attempt's run is marked KILLED; the new run FINISHES")
def test_a_sigkilled_attempts_run_is_closed_by_the_next(encoded: Path) -> None:
    env = local_env(encoded)
    process = spawn_cli(encoded, *args("train", "--variant", "lstm", "--no-progress",
                                       sets=[*TRACKED, "train.epochs=50", "train.patience=50"]), env=env)
    wait_for(encoded / MODEL_DIR / "checkpoint.pt", process)
    kill(process)
    assert [run.info.status for run in runs_of(encoded)] == ["RUNNING"]
    ok(run(encoded, "train", "--variant", "lstm", "--no-progress", sets=TRACKED, env=env))
    assert [run.info.status for run in runs_of(encoded)] == ["FINISHED", "KILLED"]


@fault(11, "the MLflow server is SIGKILLed mid-run, restarted, and the variant trained again",
       "the first train: error: ..., exit 2 (no traceback); its run is marked KILLED by the next attempt")
def test_a_server_dying_mid_run(encoded: Path, tmp_path: Path) -> None:
    from mlflow_server import start_tracking_server

    root = tmp_path / "server"
    server = start_tracking_server(root)
    try:
        env = {**local_env(encoded), "MLFLOW_TRACKING_URI": server.url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
        process = spawn_cli(encoded, *args("train", "--variant", "lstm", "--no-progress",
                                           sets=[*TRACKED, "train.epochs=50", "train.patience=50"]), env=env)
        wait_for(encoded / MODEL_DIR / "checkpoint.pt", process)
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 2 and "Traceback" not in stderr, stderr
        assert [line for line in stderr.splitlines() if line.strip()][-1].startswith("error: ")
        port = server.url.rsplit(":", 1)[1]
        server = _restart(root, int(port))
        ok(run(encoded, "train", "--variant", "lstm", "--no-progress", sets=TRACKED, env=env))
        assert [r.info.status for r in runs_of(encoded, server.url)] == ["FINISHED", "KILLED"]
    finally:
        server.stop()


def _restart(root: Path, port: int):
    """The tracking server again on its old port and store (`mlflow_server` picks a free port)."""
    import mlflow_server

    original = mlflow_server.free_port
    mlflow_server.free_port = lambda: port
    try:
        return mlflow_server.start_tracking_server(root)
    finally:
        mlflow_server.free_port = original


# ---------------------------------------------------------------------------------- 12: secrets


@fault(12, "MLFLOW_TRACKING_URI with credentials (`http://user:secret@127.0.0.1:PORT`) for a real server",
       "the probe strips them (no resolver error); training logs its run; `secret` appears in no message")
def test_credentials_in_the_tracking_uri(encoded: Path, tmp_path: Path) -> None:
    from mlflow_server import start_tracking_server

    server = start_tracking_server(tmp_path / "server")
    try:
        uri = server.url.replace("http://", "http://user:secret@")
        env = {**local_env(encoded), "MLFLOW_TRACKING_URI": uri}
        result = ok(cli(encoded, "-V", *args("train", "--variant", "bag", "--no-progress", sets=TRACKED), env=env))
        assert "secret" not in result.stderr + result.stdout
        assert [r.info.status for r in runs_of(encoded, server.url)] == ["FINISHED"]
    finally:
        server.stop()
    # The same URI once the server is gone: one line, credentials redacted.
    result = cli(encoded, *args("train", "--variant", "bag", "--no-progress", sets=TRACKED), env=env)
    line = assert_one_line_error(result, "unreachable", "127.0.0.1")
    assert "secret" not in line and "user:" not in line


def test_probe_sends_mlflow_credentials_and_accepts_401(monkeypatch) -> None:
    """An auth-enabled server answers an anonymous /health with 401 (still reachable); with
    MLFLOW_TRACKING_USERNAME/PASSWORD the probe sends them as basic auth."""
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from textrnn import mlflow_connection as tracking

    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            self.send_response(401 if self.headers.get("Authorization") is None else 200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        tracking.check_reachable(url)  # 401: reachable
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
        tracking.check_reachable(url)
        tracking.check_reachable(url.replace("http://", "http://bob:s%40cret@"))
    finally:
        server.shutdown()
    expected = [None, "alice:pw", "bob:s@cret"]
    assert [base64.b64decode(h.split()[1]).decode() if h else None for h in seen] == expected
    assert tracking.redact_text("API request to http://bob:pw@host:5000/api failed") == \
        "API request to http://host:5000/api failed"


# ----------------------------------------------------------------------------------- lineage


@fault(0, "train after data/encoded/train.npz was replaced by another encoding's",
       "error: data/encoded/train.npz does not match data/encoded/lineage.json ..., exit 2; no run starts")
def test_train_refuses_changed_encoded_ids(encoded: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(encoded, other)
    ok(run(other, "encode", sets=["tokenizer.vocab_size=300"]))
    shutil.copy2(other / "data/encoded/train.npz", encoded / "data/encoded/train.npz")
    result = run(encoded, "train", "--variant", "lstm", "--no-progress")
    assert_one_line_error(result, "data/encoded/train.npz", "lineage.json")
    assert not (encoded / "models").exists() or not list((encoded / "models").rglob("*.pt"))


@fault(0, "export after the data were re-encoded (another tokenizer than model.pt was trained with)",
       "error: data/encoded/tokenizer.json does not match models/lstm/model.pt, exit 2; previous export kept",
       kept="models/lstm")
def test_export_refuses_a_tokenizer_the_model_was_not_trained_with(exported: Path) -> None:
    ok(run(exported, "encode", sets=["tokenizer.vocab_size=300"]))
    before = snapshot(exported / MODEL_DIR)
    result = run(exported, "export", "--variant", "lstm", sets=["tokenizer.vocab_size=300"])
    assert_one_line_error(result, "tokenizer.json", "model.pt")
    assert_unchanged(before, exported / MODEL_DIR)


@fault(13, "evaluate after a bit flip inside model.onnx",
       "error: models/lstm/model.onnx does not match models/lstm/export.json, exit 2")
def test_evaluate_refuses_a_changed_graph(exported: Path) -> None:
    graph = exported / MODEL_DIR / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01
    graph.write_bytes(bytes(data))
    assert_one_line_error(run(exported, "evaluate", "--variant", "lstm"), "model.onnx", "export.json")


@pytest.fixture
def registered_ready(encoded: Path) -> tuple[Path, dict[str, str]]:
    """lstm trained, exported and evaluated with tracking on (local sqlite store)."""
    env = local_env(encoded)
    for step in ("train", "export", "evaluate"):
        ok(run(encoded, step, "--variant", "lstm", *(["--no-progress"] if step == "train" else []), sets=TRACKED,
               env=env))
    return encoded, env


@fault(0, "register after model.onnx was changed (a graph that is not the exported one)",
       "error: models/lstm/model.onnx does not match models/lstm/export.json, exit 2; nothing registered")
def test_register_refuses_a_changed_graph(registered_ready) -> None:
    workdir, env = registered_ready
    graph = workdir / MODEL_DIR / "model.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    result = run(workdir, "register", "--variant", "lstm", sets=TRACKED, env=env)
    assert_one_line_error(result, "model.onnx", "export.json")
    from mlflow import MlflowClient

    assert not MlflowClient(env["MLFLOW_TRACKING_URI"]).search_registered_models()


@fault(4, "register a model.pt trained with other params than the run logs (copied in, then exported and evaluated)",
       "error: lstm: model.pt was trained with other values than MLflow run ... logs (train.learning_rate), exit 2")
def test_register_refuses_a_model_from_another_config(registered_ready, tmp_path: Path) -> None:
    workdir, env = registered_ready
    other = tmp_path / "other"
    shutil.copytree(workdir, other, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts", ".cache"))
    ok(run(other, "train", "--variant", "lstm", "--no-progress", sets=["train.learning_rate=0.002"]))
    shutil.copy2(other / MODEL_DIR / "model.pt", workdir / MODEL_DIR / "model.pt")
    ok(run(workdir, "export", "--variant", "lstm", sets=TRACKED, env=env))
    ok(run(workdir, "evaluate", "--variant", "lstm", sets=TRACKED, env=env))
    result = run(workdir, "register", "--variant", "lstm", sets=TRACKED, env=env)
    assert_one_line_error(result, "model.pt", "train.learning_rate")

