"""Scheduled batch scoring: texts in a file → JSONL predictions from a registered model.

The same path as `textrnn predict --input FILE --output FILE --model REF`: `resolve_model` (a variant,
a model directory, or an MLflow URI such as `models:/agnews-rnn@champion`, downloaded fresh because
aliases move), then `OnnxClassifier`, then one JSON record per text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, tags, task
from prefect.cache_policies import NO_CACHE

from flows.labels import TEXTRNN_TAG, tag_flow_run
from flows.logs import textrnn_logs_in_prefect
from flows.tasks import OUTSIDE_WORLD_RETRIES
from flows.training import Overrides, load_config
from textrnn.config import DEFAULT_PARAMS, Config

CHAMPION_URI = "models:/agnews-rnn@champion"


@task(name="resolve-model", cache_policy=NO_CACHE, **OUTSIDE_WORLD_RETRIES)
def resolve_model(model: str, cfg: Config) -> str:
    """The local directory (model.onnx + tokenizer.json) for `model`; downloads MLflow URIs (retried)."""
    from textrnn.serving import resolve_model as resolve

    return str(resolve(model, cfg))


@task(name="score", cache_policy=NO_CACHE)
def score(model_dir: str, input_path: str, output_path: str, device: str) -> dict[str, Any]:
    """Score every text of `input_path` and write JSONL predictions to `output_path` (atomically)."""
    from textrnn.inference import OnnxClassifier
    from textrnn.serving import read_texts, write_predictions_jsonl

    classifier = OnnxClassifier.from_model_dir(model_dir, device=device)
    texts = read_texts(input_path)
    write_predictions_jsonl(classifier, texts, Path(output_path), show_progress=False)
    return {"texts": len(texts), "provider": classifier.provider, "output": output_path}


@flow(name="batch-predict")
def batch_predict(
    input: str,  # noqa: A002 - the parameter name users see in the UI and in prefect.yaml
    output: str,
    model: str = CHAMPION_URI,
    device: str = "auto",
    params: str = str(DEFAULT_PARAMS),
    overrides: Overrides = None,
) -> dict[str, Any]:
    """Classify the texts in `input` (CSV with a `text` column, JSONL, or one text per line) with `model`
    and write one JSON record per text to `output`; returns {texts, provider, output, model}."""
    tag_flow_run(TEXTRNN_TAG)
    with textrnn_logs_in_prefect(), tags(TEXTRNN_TAG):  # e.g. the ONNX Runtime provider, in the score task's log
        cfg = load_config(params, overrides)
        model_dir = resolve_model(model, cfg)
        result = score(model_dir, input, output, device)
    get_run_logger().info("scored %d texts with %s on %s -> %s", result["texts"], model, result["provider"], output)
    return {**result, "model": model}
