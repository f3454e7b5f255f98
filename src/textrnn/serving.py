"""Serving helpers shared by `textrnn predict` and the Prefect `batch-predict` flow: which model a
reference names, and JSONL scoring of many texts."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from textrnn.config import Config
from textrnn.errors import TextrnnError
from textrnn.files import atomic_path
from textrnn.inference import OnnxClassifier
from textrnn.runtime import progress_bar

MLFLOW_MODEL_URI_PREFIXES = ("models:/", "runs:/")
PREDICT_CHUNK = 4096  # texts per progress step when scoring a file


def _mlflow_model_dir(uri: str, cfg: Config) -> Path:
    """Download MLflow model `uri` into the cache (refreshed on every call: aliases move) and return the
    directory with its model.onnx and tokenizer.json."""
    from textrnn import tracking

    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in uri)
    return tracking.download_model(uri, cfg.paths.cache / "mlflow-models" / slug)


def resolve_model(ref: str, cfg: Config) -> Path:
    """The local model directory (model.onnx + tokenizer.json) that `--model REF` names.

    REF is a variant name (-> `paths.models/<V>`), a path to a model directory, or an MLflow model URI
    (`models:/agnews-rnn@champion`, `models:/name/3`, `runs:/<id>/model`), downloaded from the tracking
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
    """Score `texts` in chunks and write one JSON record per text to `output` (atomically)."""
    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8") as handle, progress_bar(show_progress) as bar:
        task = bar.add_task(f"scoring {len(texts)} texts", total=len(texts), rate=0.0)
        started = time.perf_counter()
        for start in range(0, len(texts), PREDICT_CHUNK):
            chunk = texts[start : start + PREDICT_CHUNK]
            labels, probabilities = classifier.predict(chunk)
            for text, label, row in zip(chunk, labels, probabilities):
                handle.write(json.dumps(prediction_record(text, label, row, classifier.classes)) + "\n")
            done = start + len(chunk)
            bar.update(task, completed=done, rate=done / max(time.perf_counter() - started, 1e-9))
