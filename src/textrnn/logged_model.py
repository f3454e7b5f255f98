"""The variant's MLflow model: the exported ONNX graph logged as a pyfunc (models-from-code, no pickle), and
downloaded back for serving. Split from `textrnn.tracking`, which re-exports both functions."""

from __future__ import annotations

from pathlib import Path
import mlflow
import mlflow.pyfunc

from textrnn import stopping
from textrnn.config import Config
from textrnn.errors import TextrnnError
from textrnn.filenames import ONNX_FILE, TOKENIZER_FILE
from textrnn.files import atomic_dir, sha256_file
from textrnn.mlflow_connection import TrackingError, _one_line_errors, check_reachable, tracking_uri
from textrnn.provenance import package_version
from textrnn.pyfunc import model_spec

def pip_requirements() -> list[str]:
    """What the served model imports, pinned to this environment (explicit: no slow inference)."""
    names = ("mlflow", "onnxruntime-gpu", "tokenizers", "numpy", "pandas", "cloudpickle")
    return [f"{name}=={package_version(name)}" for name in names]


def _example_texts(cfg: Config) -> list[str]:
    """Two real test texts (the first rows of the prepared test split), or fixed ones without it."""
    try:
        from textrnn.data import read_split

        return read_split(cfg.paths.prepared, "test")["text"].head(2).tolist()
    except TextrnnError:
        return ["Stocks rally as the central bank holds rates", "Home side beat the champions 2-1"]


@stopping.deferred()
def log_model(cfg: Config, variant: str) -> str:
    """Log the exported variant as a pyfunc named after it in the active run; returns its MLflow model id.

    The model (`textrnn.pyfunc.model_spec`) bundles `models/<V>/model.onnx`, `tokenizer.json` and
    export.json, textrnn's own code, the `text`-column signature, an input example and pinned pip
    requirements. Tags the run with `model_id` and `onnx_sha256`, which `register_variant` checks.
    """
    from textrnn.inference import OnnxClassifier

    model_dir = cfg.paths.model_dir(variant)
    classifier = OnnxClassifier.from_model_dir(model_dir, device="cpu")  # verifies the graph first
    spec = model_spec(model_dir, classifier.classes, _example_texts(cfg))
    spec["metadata"]["variant"] = variant
    info = mlflow.pyfunc.log_model(name=variant, pip_requirements=pip_requirements(), **spec)
    mlflow.set_tags({"model_id": info.model_id, "onnx_sha256": sha256_file(cfg.paths.onnx_file(variant))})
    return info.model_id


def download_model(model_uri: str, destination: Path | str) -> Path:
    """Download an MLflow model logged by `log_model` (`models:/name@alias`, `models:/name/3`,
    `runs:/<id>/<variant>`, ...) to `destination`, replacing what was there; returns the directory holding
    its `model.onnx` and `tokenizer.json` (`destination/artifacts`).

    Raises TrackingError (one line) when the server is unreachable, the model does not exist, or it is
    not a textrnn model.
    """
    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    destination = Path(destination)
    # Download beside the target and swap it in whole: an alias may have moved since the last download.
    with _one_line_errors(model_uri), atomic_dir(destination, key="cache") as staging:
        mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(staging))
    bundled = destination / "artifacts"
    if not (bundled / ONNX_FILE).is_file() or not (bundled / TOKENIZER_FILE).is_file():
        raise TrackingError(f"{model_uri}: not a textrnn model (no artifacts/{ONNX_FILE} and {TOKENIZER_FILE})")
    return bundled


