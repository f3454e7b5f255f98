"""Outputs under faults and bad settings: confinement to the working directory, directories textrnn did
not make, killed runs' leftovers, `encode` as one unit, one writer at a time, strict config values.

Each case asserts the one-line error (or the recovery) and that every file that existed before is
byte-for-byte intact. Real processes where the fault needs one (SIGKILL, a second writer); in-process
calls elsewhere, to keep the suite fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fault_kit import PARAMS, assert_one_line_error, assert_unchanged, cli, fault, snapshot
from textrnn import files, lineage, locks
from textrnn.cli import app
from textrnn.errors import TextrnnError

TINY = ("data.source=sample", "data.sample.train_rows=400", "data.sample.test_rows=80", "tracking.enabled=false")


def sets(*overrides: str) -> list[str]:
    return [arg for override in (*TINY, *overrides) for arg in ("--set", override)]


def textrnn(cwd: Path, step: str, *overrides: str) -> subprocess.CompletedProcess:
    """The real CLI running `step` on the tiny sample in `cwd`."""
    return cli(cwd, step, "--params", str(PARAMS), *sets(*overrides))


def user_checkout(root: Path) -> Path:
    """Files a user owns in a working directory: a checkout's params, git dir, code, and raw data."""
    for name, text in {"params.yaml": "seed: 1\n", ".git/HEAD": "ref: refs/heads/main\n", "src/app.py": "print(1)\n",
                       "data/raw/train.csv": "text,label\nhello,0\n"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(scope="module")
def encoded_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory with the tiny sample prepared and encoded (in-process, once per module)."""
    from textrnn import config
    from textrnn.data import prepare
    from textrnn.tokens import encode

    root = tmp_path_factory.mktemp("encoded-template")
    with contextlib.chdir(root):
        cfg = config.load(PARAMS, list(TINY))
        prepare(cfg)
        encode(cfg)
    return root


@pytest.fixture
def encoded(encoded_template: Path, tmp_path: Path) -> Path:
    """tmp_path (the working directory) holding a copy of the prepared and encoded tiny sample."""
    shutil.copytree(encoded_template, tmp_path, dirs_exist_ok=True)
    return tmp_path


# ------------------------------------------------------------------------------------- confinement

OUTSIDE = "resolves outside the working directory"

CONFINEMENT = [
    pytest.param("paths.prepared={cwd}", "is the working directory itself", id="cwd-absolute",
                 marks=fault(1, "`prepare --set paths.prepared=$PWD` (the issue's checkout-deleting case)",
                             "error: paths.prepared: ... is the working directory itself, exit 2", kept="the working directory")),
    pytest.param("paths.prepared=.", "is the working directory itself", id="dot",
                 marks=fault(1, "`paths.prepared=.`", "error: paths.prepared: ... is the working directory itself, exit 2",
                             kept="the working directory")),
    pytest.param("paths.prepared=..", OUTSIDE, id="parent",
                 marks=fault(1, "`paths.prepared=..`", f"error: paths.prepared: ... {OUTSIDE} ..., exit 2",
                             kept="the working directory")),
    pytest.param("paths.prepared=/", OUTSIDE, id="root",
                 marks=fault(1, "`paths.prepared=/`", f"error: paths.prepared: / {OUTSIDE} ..., exit 2",
                             kept="the working directory")),
    pytest.param("paths.models={outside}", OUTSIDE, id="absolute-outside",
                 marks=fault(0, "`paths.models=/some/other/dir` (absolute, outside the working directory)",
                             f"error: paths.models: ... {OUTSIDE} ..., exit 2", kept="the working directory")),
    pytest.param("paths.encoded=link/encoded", OUTSIDE, id="symlink-outside",
                 marks=fault(0, "`paths.encoded=link/encoded` where `link` is a symlink to a directory outside",
                             f"error: paths.encoded: ... {OUTSIDE} ..., exit 2", kept="the working directory")),
    pytest.param("paths.prepared=data", "paths.encoded", id="data-holding-user-files",
                 marks=fault(1, "`paths.prepared=data` (data/raw/train.csv is the user's)",
                             "error: paths.encoded: ... lies inside paths.prepared ..., exit 2", kept="the working directory")),
    pytest.param("paths.metrics=models", "is also paths.models", id="two-keys-equal",
                 marks=fault(0, "two outputs in one directory (`paths.metrics=models`)",
                             "error: paths.metrics: ... is also paths.models, exit 2", kept="the working directory")),
    pytest.param("paths.encoded=data/prepared/encoded", "lies inside paths.prepared", id="nested",
                 marks=fault(0, "one output inside another (`paths.encoded=data/prepared/encoded`)",
                             "error: paths.encoded: ... lies inside paths.prepared ..., exit 2", kept="the working directory")),
]


@pytest.mark.parametrize(("override", "fragment"), CONFINEMENT)
def test_output_paths_outside_or_overlapping_are_refused(tmp_path: Path, tmp_path_factory, override: str,
                                                        fragment: str) -> None:
    outside = tmp_path_factory.mktemp("outside")
    (outside / "keep.txt").write_text("a user's file\n", encoding="utf-8")
    (tmp_path / "link").symlink_to(outside, target_is_directory=True)
    user_checkout(tmp_path)
    before, before_outside = snapshot(tmp_path), snapshot(outside)

    result = textrnn(tmp_path, "prepare", override.format(cwd=tmp_path, outside=outside))

    assert_one_line_error(result, override.split("=")[0], fragment)
    assert_unchanged(before, tmp_path)
    assert_unchanged(before_outside, outside)
    assert not (tmp_path / "data" / "prepared").exists()


@fault(0, "an input file inside an output directory (`data.train_path=data/prepared/train.csv`)",
       "error: data.train_path: ... lies inside paths.prepared, which textrnn replaces whole, exit 2",
       kept="the working directory")
def test_an_input_inside_an_output_directory_is_refused(tmp_path: Path) -> None:
    user_checkout(tmp_path)
    (tmp_path / "data" / "prepared").mkdir()
    (tmp_path / "data" / "prepared" / "train.csv").write_text("text,label\nhi,0\n", encoding="utf-8")
    before = snapshot(tmp_path)
    result = textrnn(tmp_path, "prepare", "data.source=csv", "data.train_path=data/prepared/train.csv",
                     "data.test_path=data/raw/train.csv")
    assert_one_line_error(result, "data.train_path", "lies inside paths.prepared")
    assert_unchanged(before, tmp_path)


# ------------------------------------------------------------------ directories textrnn did not make


@fault(1, "`paths.prepared=data` with `paths.encoded` moved away: data/ holds the user's data/raw/",
       "error: data: exists and was not made by textrnn; move it away or choose another paths.prepared, exit 2",
       kept="the working directory")
def test_an_existing_directory_textrnn_did_not_make_is_never_replaced(tmp_path: Path) -> None:
    user_checkout(tmp_path)
    before = snapshot(tmp_path)
    result = textrnn(tmp_path, "prepare", "paths.prepared=data", "paths.encoded=encoded")
    assert_one_line_error(result, "data: exists and was not made by textrnn; move it away or choose another")
    assert_unchanged(before, tmp_path)
    assert not [path for path in (tmp_path).iterdir() if path.name.endswith(".tmp")], "staging left behind"


@fault(0, "the default data/prepared already exists holding a user's notes (no textrnn marker)",
       "error: data/prepared: exists and was not made by textrnn ..., exit 2", kept="data/prepared")
def test_a_user_directory_at_the_default_output_path_is_kept(tmp_path: Path) -> None:
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "notes.txt").write_text("mine\n", encoding="utf-8")
    before = snapshot(tmp_path)
    assert_one_line_error(textrnn(tmp_path, "prepare"), "data/prepared: exists and was not made by textrnn")
    assert_unchanged(before, tmp_path)


def test_a_directory_textrnn_made_is_replaced_and_marked(encoded: Path) -> None:
    marker = encoded / "data" / "encoded" / files.MARKER
    assert marker.read_text(encoding="utf-8") == files.MARKER_TEXT  # constant: DVC outputs stay reproducible
    result = textrnn(encoded, "encode", "tokenizer.vocab_size=100")
    assert result.returncode == 0, result.stderr
    assert json.loads((encoded / "data/encoded/buckets.json").read_text())["vocab_size"] == 100


def test_an_unmarked_directory_of_only_the_files_textrnn_writes_is_adopted(tmp_path: Path) -> None:
    """The upgrade path from versions that wrote no marker: replacing it loses nothing the new files
    would not overwrite one by one. A symlink or an extra file is never adopted."""
    target = tmp_path / "out"
    target.mkdir()
    (target / "a.json").write_text("old\n")
    with files.atomic_dir(target, key="encoded") as staging:
        (staging / "a.json").write_text("new\n")
    assert (target / "a.json").read_text() == "new\n" and files.is_marked(target)

    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "a.json").write_text("theirs\n")
    (tmp_path / "theirs" / "b.txt").write_text("theirs\n")
    with pytest.raises(TextrnnError, match="theirs: exists and was not made by textrnn.*paths.encoded$"):
        with files.atomic_dir(tmp_path / "theirs", key="encoded") as staging:
            (staging / "a.json").write_text("new\n")
    assert sorted(p.name for p in (tmp_path / "theirs").iterdir()) == ["a.json", "b.txt"]

    (tmp_path / "link").symlink_to(target, target_is_directory=True)
    with pytest.raises(TextrnnError, match="link: exists and was not made by textrnn"):
        with files.atomic_dir(tmp_path / "link", key="encoded"):
            pass
    assert files.is_marked(target)


# ------------------------------------------------------------------------- killed runs' leftovers


@fault(0, "staging directories and files left by a SIGKILLed run beside data/prepared",
       "the next run removes them (only our `.name.<dead pid>.*.tmp` names; a live writer's and the user's stay)",
       kept="data/raw")
def test_a_killed_runs_staging_is_cleaned_by_the_next_run(tmp_path: Path) -> None:
    user_checkout(tmp_path)
    data = tmp_path / "data"
    dead, alive = dead_pid(), os.getpid()
    stale = [data / f".prepared.{dead}.abcd1234.tmp", data / f".report.json.{dead}.zz_99xyz.tmp"]
    stale[0].mkdir()
    (stale[0] / "train.parquet").write_bytes(b"half")
    stale[1].write_text("{")
    (data / "prepared").mkdir()  # a marked output of an earlier run
    (data / "prepared" / files.MARKER).write_text(files.MARKER_TEXT)
    kept = [data / f".prepared.{alive}.qwer5678.tmp", data / ".prepared.notes.tmp", data / "prepared.old"]
    for path in kept:
        path.mkdir()
    before = snapshot(data / "raw")

    result = textrnn(tmp_path, "prepare")

    assert result.returncode == 0, result.stderr
    assert not stale[0].exists()
    assert all(path.exists() for path in kept), "a live writer's staging or a user's directory was removed"
    assert_unchanged(before, data / "raw")
    files.clean_stale(data / "report.json")
    assert not stale[1].exists()


def _child(script: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@fault(5, "SIGKILL of `encode` after the new ids and tokenizer are staged, before they are published",
       "data/encoded and its tokenizer stay the old matching pair; the next encode publishes both and cleans up",
       kept="data/encoded")
def test_sigkill_during_encode_keeps_ids_and_tokenizer_together(encoded: Path) -> None:
    before = snapshot(encoded / "data")
    # A real SIGKILL at the worst moment of the old design: ids written, tokenizer not yet.
    killed = _child(f"""
        import os, signal
        from textrnn import config, tokens
        real = tokens.write_json
        def write_then_die(path, payload):
            real(path, payload)
            if str(path).endswith("lineage.json"):
                os.kill(os.getpid(), signal.SIGKILL)
        tokens.write_json = write_then_die
        tokens.encode(config.load({str(PARAMS)!r}, {[*TINY, "tokenizer.vocab_size=50"]!r}))
    """, encoded)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert_unchanged(before, encoded / "data")
    recorded = json.loads((encoded / "data/encoded/lineage.json").read_text())["outputs"]
    lineage.verify_outputs(encoded / "data/encoded", recorded, "lineage.json")  # ids + tokenizer still match
    assert [p.name for p in (encoded / "data").iterdir() if p.name.endswith(".tmp")], "the kill left its staging"

    again = textrnn(encoded, "encode", "tokenizer.vocab_size=50")
    assert again.returncode == 0, again.stderr
    assert not [p.name for p in (encoded / "data").iterdir() if p.name.startswith(".")]
    outputs = json.loads((encoded / "data/encoded/lineage.json").read_text())["outputs"]
    lineage.verify_outputs(encoded / "data/encoded", outputs, "lineage.json")
    assert outputs["tokenizer.json"] != recorded["tokenizer.json"]


@fault(0, "SIGKILL between the two renames of the rename-aside fallback (no atomic exchange on the file system)",
       "the next run puts the old directory back before anything else; nothing is lost", kept="data/encoded")
def test_sigkill_in_the_rename_aside_fallback_is_recovered(encoded: Path) -> None:
    before = snapshot(encoded / "data" / "encoded")
    killed = _child(f"""
        import os, signal
        from textrnn import config, files, tokens
        files._renameat2 = lambda *args: False  # as where renameat2 is missing
        real_rename = os.rename
        def rename_then_die(source, destination):
            real_rename(source, destination)
            if str(destination).endswith(".encoded.old"):
                os.kill(os.getpid(), signal.SIGKILL)
        os.rename = rename_then_die
        tokens.encode(config.load({str(PARAMS)!r}, {[*TINY]!r}))
    """, encoded)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (encoded / "data" / "encoded").exists() and (encoded / "data" / ".encoded.old").is_dir()

    files.recover(encoded / "data" / "encoded")  # what every atomic_dir on that target does first
    assert_unchanged(before, encoded / "data" / "encoded")
    assert not (encoded / "data" / ".encoded.old").exists()


def test_the_atomic_exchange_never_leaves_the_target_missing(tmp_path: Path, monkeypatch) -> None:
    """Where renameat2 exists the swap is one exchange: no moment without the directory, no `.old`."""
    target = tmp_path / "out"
    with files.atomic_dir(target) as staging:
        (staging / "a").write_text("1")
    calls = []
    real = files._renameat2
    monkeypatch.setattr(files, "_renameat2", lambda *args: calls.append(args[2]) or real(*args))
    monkeypatch.setattr(files.os, "rename", lambda *args: pytest.fail("fell back to rename-aside"))
    with files.atomic_dir(target) as staging:
        (staging / "a").write_text("2")
    assert calls == [2] and (target / "a").read_text() == "2"  # RENAME_EXCHANGE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---------------------------------------------------------------------------------- one writer


HOLD = """
    import sys
    from textrnn import locks
    with locks.exclusive({name!r}, {cache!r}):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes our stdin (or kills us)
"""


def _holder(cwd: Path, name: str) -> subprocess.Popen:
    """A real process holding lock `name` under cwd/.cache until its stdin closes; returned once it holds it."""
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLD.format(name=name, cache=".cache"))],
                               cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


@fault(0, "a second writer of one variant while another process holds it", "error: variant lstm is being written by "
       "pid N (...) since T; wait for it or pass --wait, at once")
def test_a_second_writer_fails_at_once_naming_the_holder(tmp_path: Path) -> None:
    holder = _holder(tmp_path, "variant-lstm")
    try:
        with pytest.raises(locks.LockedError) as refused:
            with locks.exclusive("variant-lstm", tmp_path / ".cache"):
                pass
        message = str(refused.value)
        assert message.startswith(f"variant lstm is being written by pid {holder.pid} (")
        assert message.endswith("; wait for it or pass --wait") and "\n" not in message
        with locks.exclusive("variant-gru", tmp_path / ".cache"):
            pass  # other variants are free
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


@fault(0, "the lock holder is SIGKILLed", "the lock is free at once for the next writer (the kernel drops it)")
def test_a_killed_holder_never_leaves_a_stale_lock(tmp_path: Path) -> None:
    holder = _holder(tmp_path, "data")
    holder.kill()
    holder.wait(timeout=30)
    with locks.exclusive("data", tmp_path / ".cache"):
        pass


def test_wait_blocks_until_the_holder_is_done(tmp_path: Path) -> None:
    holder = _holder(tmp_path, "data")
    acquired = threading.Event()

    def writer() -> None:
        with locks.exclusive("data", tmp_path / ".cache", wait=True):
            acquired.set()

    thread = threading.Thread(target=writer)
    thread.start()
    assert not acquired.is_set()  # the holder still holds it: nothing can have been acquired yet
    holder.stdin.close()
    holder.wait(timeout=30)
    thread.join(timeout=30)
    assert acquired.is_set()


@fault(0, "`textrnn prepare` while another process writes the data", "error: the prepared and encoded data are "
       "being written by pid N (...); wait for it or pass --wait, exit 2", kept="data/")
def test_concurrent_prepare_fails_naming_the_pid(encoded: Path) -> None:
    before = snapshot(encoded / "data")
    with locks.exclusive("data", encoded / ".cache"):
        result = textrnn(encoded, "prepare", "seed=7")
    assert_one_line_error(result, f"being written by pid {os.getpid()}", "--wait")
    assert_unchanged(before, encoded / "data")


# ------------------------------------------------------------------------------------ strict config

runner = CliRunner()

BAD_VALUES = [
    pytest.param("train.learning_rate=.inf", "train.learning_rate", id="lr-inf",
                 marks=fault(7, "`--set train.learning_rate=.inf`", "error: train.learning_rate: Input should be a finite number, exit 2")),
    pytest.param("train.grad_clip=.nan", "train.grad_clip", id="clip-nan",
                 marks=fault(0, "`--set train.grad_clip=.nan`", "error: train.grad_clip: Input should be a finite number, exit 2")),
    pytest.param("train.epochs=true", "train.epochs", id="epochs-bool",
                 marks=fault(7, "`--set train.epochs=true`", "error: train.epochs: Input should be a valid integer (got True), exit 2")),
    pytest.param("variants.lstm.masked=1", "variants.lstm.masked", id="bool-as-int",
                 marks=fault(0, "`--set variants.lstm.masked=1`", "error: variants.lstm.masked: Input should be a valid boolean, exit 2")),
    pytest.param("train.learning_rate=false", "train.learning_rate", id="lr-bool",
                 marks=fault(0, "`--set train.learning_rate=false`", "error: train.learning_rate: expected a number, not true/false, exit 2")),
    pytest.param("tokenizer.vocab_size=1e20", "tokenizer.vocab_size", id="vocab-1e20",
                 marks=fault(10, "`--set tokenizer.vocab_size=1e20` (a string to YAML)",
                             "error: tokenizer.vocab_size: Input should be a valid integer (got '1e20'), exit 2")),
    pytest.param("tokenizer.vocab_size=1.0e+20", "tokenizer.vocab_size", id="vocab-float",
                 marks=fault(10, "`--set tokenizer.vocab_size=1.0e+20` (a float to YAML)",
                             "error: tokenizer.vocab_size: Input should be a valid integer, exit 2")),
    pytest.param("tokenizer.vocab_size=100000000000000000000", "less than or equal to", id="vocab-huge",
                 marks=fault(10, "`--set tokenizer.vocab_size=100000000000000000000`",
                             "error: tokenizer.vocab_size: Input should be less than or equal to 10000000, exit 2")),
    pytest.param("seed=18446744073709551616", "seed", id="seed-huge",
                 marks=fault(0, "`--set seed=2**64`", "error: seed: Input should be less than 4294967296, exit 2")),
]


@pytest.mark.parametrize(("override", "fragment"), BAD_VALUES)
def test_bad_config_values_fail_with_one_line(tmp_path: Path, override: str, fragment: str) -> None:
    result = runner.invoke(app, ["prepare", "--params", str(PARAMS), *sets(override)])
    assert_one_line_error(result, str(PARAMS), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@fault(10, "params.yaml holding bytes that are not UTF-8", "error: params.yaml: line 3 is not valid UTF-8 (byte 0xff), exit 2",
       kept="params.yaml")
def test_params_file_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_bytes(b"seed: 1\ndata:\n  hf_name: caf\xff\n")
    before = snapshot(tmp_path)
    result = cli(tmp_path, "prepare")  # the real CLI, reading ./params.yaml
    assert_one_line_error(result, "params.yaml: line 3 is not valid UTF-8 (byte 0xff)")
    assert_unchanged(before, tmp_path)


# ------------------------------------------------------------------------------------ strict JSON


@fault(7, "a step asked to write NaN or Infinity into a JSON report",
       "error: <file>: <key> is not a finite number; refusing to write invalid JSON; the old file stays", kept="the file")
def test_json_writer_refuses_non_finite_numbers(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    files.write_json(path, {"best_val_loss": 0.5})
    before = path.read_bytes()
    with pytest.raises(TextrnnError, match=r"train\.json: history\[1\]\.val_loss is not a finite number"):
        files.write_json(path, {"history": [{"val_loss": 1.0}, {"val_loss": float("nan")}]})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.json"]


@fault(10, "an output file path that names a directory", "error: <path>: is a directory; name a file", kept="the directory")
def test_atomic_path_onto_a_directory_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    with pytest.raises(TextrnnError, match="out: is a directory; name a file"):
        with files.atomic_path(tmp_path / "out"):
            pass
    assert (tmp_path / "out" / "keep").read_text() == "x"
