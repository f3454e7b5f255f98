"""Serving helpers shared by `textrnn predict` and the Prefect `batch-predict` flow: which model a
reference names, the texts an input file holds, and JSONL scoring of many texts."""

from __future__ import annotations

import csv
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from textrnn.config import Config
from textrnn.errors import TextrnnError
from textrnn.files import atomic_path
from textrnn.inference import InferenceError, OnnxClassifier
from textrnn.runtime import progress_bar

MLFLOW_MODEL_URI_PREFIXES = ("models:/", "runs:/")
PREDICT_CHUNK = 4096  # texts per progress step when scoring a file


class ServingError(TextrnnError):
    """A predictions output that cannot be written; one line naming the file."""


def check_output_path(output: Path | str) -> Path:
    """`output` if a JSONL file can be written there, else ServingError (one line naming it).

    Checked before any work (the CLI calls it before loading the model): an existing directory, a
    parent that is a file, or a parent directory that cannot be written fails at once.
    """
    output = Path(output)
    if output.is_dir():
        raise ServingError(f"{output}: is a directory; --output needs a file path (e.g. {output / 'predictions.jsonl'})")
    parent = next((p for p in (output.parent, *output.parent.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise ServingError(f"{output}: cannot write it ({parent} is not a directory)")
    try:  # a real probe: permission bits say nothing about a read-only mount, and root ignores them
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as error:
        raise ServingError(f"{output}: cannot write it ({error.strerror or error})") from None
    return output


def _mlflow_model_dir(uri: str, cfg: Config) -> Path:
    """Download MLflow model `uri` into the cache (refreshed on every call: aliases move) and return the
    directory with its model.onnx and tokenizer.json."""
    from textrnn import tracking

    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in uri)
    return tracking.download_model(uri, cfg.paths.cache / "mlflow-models" / slug)


def resolve_model(ref: str, cfg: Config) -> Path:
    """The local model directory (model.onnx + tokenizer.json) that `--model REF` names.

    REF is a variant name (-> `paths.models/<V>`), a path to a model directory, or an MLflow model URI
    (`models:/agnews-rnn@champion`, `models:/name/3`, `runs:/<id>/<variant>`), downloaded from the tracking
    server ($MLFLOW_TRACKING_URI, else ./mlflow.db) into `paths.cache/mlflow-models/`.
    """
    if ref.startswith(MLFLOW_MODEL_URI_PREFIXES):
        return _mlflow_model_dir(ref, cfg)
    if ref in cfg.variants:
        return cfg.paths.model_dir(ref)
    if Path(ref).is_dir():
        return Path(ref)
    raise TextrnnError(f"--model {ref}: neither a variant ({', '.join(cfg.variants)}) nor a model directory")


def prediction_record(text: str, label: str, probabilities, classes: list[str]) -> dict[str, Any]:
    """One JSONL record: the text, its label and per-class probabilities (6 decimals)."""
    return {"text": text, "label": label, "probabilities": {name: round(float(p), 6) for name, p in zip(classes, probabilities)}}


def write_predictions_jsonl(classifier: OnnxClassifier, texts: list[str], output: Path, show_progress: bool) -> None:
    """Score `texts` in chunks and write one JSON record per text to `output` (atomically).

    Raises ServingError (one line naming `output`) when it is a directory or cannot be written (checked
    before scoring; a full disk or read-only file system while writing too); `output` is then untouched.
    """
    output = check_output_path(output)
    try:
        _write_predictions(classifier, texts, output, show_progress)
    except OSError as error:
        raise ServingError(f"{output}: cannot write it ({error.strerror or error})") from None


def _write_predictions(classifier: OnnxClassifier, texts: list[str], output: Path, show_progress: bool) -> None:
    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8") as handle, progress_bar(show_progress) as bar:
        task = bar.add_task(f"scoring {len(texts)} texts", total=len(texts), rate=0.0, result="")
        started = time.perf_counter()
        for start in range(0, len(texts), PREDICT_CHUNK):
            chunk = texts[start : start + PREDICT_CHUNK]
            labels, probabilities = classifier.predict(chunk)
            for text, label, row in zip(chunk, labels, probabilities):
                handle.write(json.dumps(prediction_record(text, label, row, classifier.classes)) + "\n")
            done = start + len(chunk)
            bar.update(task, completed=done, rate=done / max(time.perf_counter() - started, 1e-9))


def read_texts(path: Path | str) -> list[str]:
    """Texts to score from a file: `.csv` (a `text` column), `.jsonl` (a `text` field per line) or
    anything else as plain text, one text per line (blank lines kept, so line i is text i).

    The file must be UTF-8 (a leading BOM is allowed): a byte sequence that is not is an error naming
    the line and column, never replaced silently (a replaced character would be scored as another text).
    Raises InferenceError naming the file (and line) when it is missing, unreadable or malformed.
    """
    path = Path(path)
    if path.is_dir():
        raise InferenceError(f"{path}: is a directory; --input needs a file")
    if not path.is_file():
        raise InferenceError(f"{path}: input file not found")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise InferenceError(f"{path}: cannot read ({error.strerror or error})") from None
    content = _decoded(raw, path).removeprefix("\ufeff")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv_texts(content, path)
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl_texts(content, path)
    return _lines(content)


def _lines(content: str) -> list[str]:
    """`content` cut at line feeds only (`\\r\\n` too), as a text editor numbers lines: a U+2028 or a
    form feed inside a text stays in it (`str.splitlines` would cut there and shift every later text)."""
    lines = content.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _decoded(raw: bytes, path: Path) -> str:
    """`raw` as UTF-8; InferenceError naming the line and column of the first invalid byte otherwise."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise InferenceError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{raw[error.start]:02x} at byte {column} of the line); "
            "save the file as UTF-8"
        ) from None


def _csv_texts(content: str, path: Path) -> list[str]:
    reader = csv.DictReader(io.StringIO(content, newline=""))
    try:
        if reader.fieldnames is None or "text" not in reader.fieldnames:
            raise InferenceError(f"{path}: CSV needs a header with a 'text' column (found {reader.fieldnames or 'none'})")
        return [row["text"] or "" for row in reader]
    except csv.Error as error:
        raise InferenceError(f"{path}:{reader.line_num}: malformed CSV ({error})") from None


def _jsonl_texts(content: str, path: Path) -> list[str]:
    texts = []
    for number, line in enumerate(_lines(content), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InferenceError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InferenceError(f"{path}:{number}: expected an object with a string 'text' field")
        texts.append(record["text"])
    return texts
