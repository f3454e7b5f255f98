"""The MLflow pyfunc model: a textrnn variant served by `mlflow models serve` (or loaded with
`mlflow.pyfunc.load_model`) with a strict input contract.

Contract
    The input is a column named `text` (required) whose every value is a string; other columns are
    ignored. Anything else is refused with MLflow's `INVALID_PARAMETER_VALUE`, which the scoring
    server answers with HTTP 400 and this module's one-line message naming the column or the index:

    - no `text` column (`{"dataframe_records": [{"id": "..."}]}`): refused by MLflow's schema check
      ("Model is missing inputs ['text']") before `predict` runs, and by `texts_from_input` otherwise;
    - a value that is not a string (`{"inputs": ["a", 5, null, true]}`): "text[1] is a number (5), ...";
    - no texts at all (`{"inputs": []}`, an empty frame): "no texts: ...".

    Accepted request bodies: `{"inputs": ["...", ...]}`, `{"inputs": {"text": [...]}}`,
    `{"inputs": [{"text": "..."}, ...]}`, `{"dataframe_records": [{"text": "..."}, ...]}` and
    `{"dataframe_split": {"columns": ["text"], "data": [["..."], ...]}}`. In process, `predict` takes a
    DataFrame with a `text` column or `{"text": [...]}` (a bare list has no column name: MLflow's
    schema check refuses it).

Why the signature declares `text` with type `any` and not `string`
    With a `string` column, MLflow's scoring server converts an `inputs` list to strings before the
    model sees it (`{"inputs": ["a", 5, null, true]}` arrives as "a", "5", "None", "True": verified on
    MLflow 3.17, see tests/model/test_faults_serving.py), so no check in `predict` could refuse those values.
    Declared `any`, the values arrive as sent and `texts_from_input` enforces "string" itself; the
    signature still names the required column, and `metadata["input_contract"]` states the type.

Outputs: `label` plus one `prob_<class>` float column per class, rows in input order. The model runs
through `textrnn.inference.OnnxClassifier` (which normalises texts and verifies the graph's sha256) on the
bundled `model.onnx`, `tokenizer.json` and `export.json`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from numbers import Number
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow.pyfunc  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.models import ModelSignature  # noqa: E402
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE  # noqa: E402
from mlflow.types import ColSpec, Schema  # noqa: E402
from mlflow.types.schema import AnyType  # noqa: E402

from textrnn.errors import TextrnnError  # noqa: E402
from textrnn.filenames import EXPORT_REPORT_FILE, ONNX_FILE, TOKENIZER_FILE  # noqa: E402

TEXT_COLUMN = "text"
LABEL_COLUMN = "label"
PROBABILITY_PREFIX = "prob_"
INFERENCE_DEVICE = "inference_device"  # the pyfunc's model_config key: auto | cpu | cuda
INPUT_CONTRACT = "a required column 'text' of strings; other columns are ignored"
# The pyfunc's artifacts: name -> file in the exported model directory (export.json lets a graph
# exported before graphs carried their own sha256 still verify after download).
ARTIFACT_FILES = {"onnx_model": ONNX_FILE, "tokenizer": TOKENIZER_FILE, "export_report": EXPORT_REPORT_FILE}
_SHOWN_BAD_VALUES = 3


def invalid_input(message: str) -> MlflowException:
    """The exception `predict` raises for a bad input: the scoring server answers 400 with `message`."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _describe(value: Any) -> str:
    """What a non-string value is, in the words of a JSON user."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "null (missing)"
    if isinstance(value, (bool, np.bool_)):
        return f"a boolean ({str(bool(value)).lower()})"
    if isinstance(value, Number):
        return f"a number ({value})"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _column_values(model_input: Any) -> list[Any]:
    """The raw values of the `text` column of `model_input`, as MLflow hands them over."""
    if isinstance(model_input, list) and model_input and all(isinstance(row, dict) for row in model_input):
        model_input = pd.DataFrame(model_input)
    if isinstance(model_input, dict):
        if TEXT_COLUMN not in model_input:
            raise invalid_input(f"no '{TEXT_COLUMN}' in the model input (keys: {sorted(map(str, model_input))[:10]}); "
                                f"send {INPUT_CONTRACT}")
        values = model_input[TEXT_COLUMN]
        return list(values) if isinstance(values, (list, tuple, np.ndarray, pd.Series)) else [values]
    if isinstance(model_input, pd.DataFrame):
        columns = [str(column) for column in model_input.columns]
        if columns.count(TEXT_COLUMN) > 1:
            raise invalid_input(f"the model input has {columns.count(TEXT_COLUMN)} columns named '{TEXT_COLUMN}'; send one")
        if TEXT_COLUMN not in columns:
            raise invalid_input(f"the model input has no '{TEXT_COLUMN}' column (columns: {columns[:10]}); "
                                f"send {INPUT_CONTRACT}")
        values = model_input[model_input.columns[columns.index(TEXT_COLUMN)]].tolist()
        # `{"inputs": ["a", "b"]}` reaches the model as ONE row whose `text` is the whole list (MLflow
        # builds the frame from {"text": [...]}): that list is the batch.
        if len(values) == 1 and isinstance(values[0], (list, tuple, np.ndarray)):
            return list(values[0])
        return values
    if isinstance(model_input, (str, bytes)):
        raise invalid_input(f"the model input is a single {type(model_input).__name__}; send {INPUT_CONTRACT}")
    raise invalid_input(f"the model input is a {type(model_input).__name__}; send {INPUT_CONTRACT}")


def texts_from_input(model_input: Any) -> list[str]:
    """The texts in `model_input` (a DataFrame with a `text` column, `{"text": [...]}`, or records), in
    order; raises `invalid_input` (HTTP 400 when served) naming the column or the first bad indices:
    no `text` column, a value that is not a string, or no texts at all."""
    values = _column_values(model_input)
    if not values:
        raise invalid_input(f"no texts: column '{TEXT_COLUMN}' is empty; send at least one string")
    bad = [(index, value) for index, value in enumerate(values) if not isinstance(value, str)]
    if bad:
        shown = ", ".join(f"{TEXT_COLUMN}[{index}] is {_describe(value)}" for index, value in bad[:_SHOWN_BAD_VALUES])
        more = f" and {len(bad) - _SHOWN_BAD_VALUES} more" if len(bad) > _SHOWN_BAD_VALUES else ""
        raise invalid_input(f"{shown}{more}: every value of column '{TEXT_COLUMN}' must be a string")
    return [str(value) for value in values]  # numpy's str_ -> str


def prediction_frame(labels: Sequence[str], probabilities: Any, classes: Sequence[str]) -> pd.DataFrame:
    """The pyfunc's output: `label` plus one `prob_<class>` column per class, rows in input order."""
    frame = pd.DataFrame({LABEL_COLUMN: list(labels)})
    for index, name in enumerate(classes):
        frame[f"{PROBABILITY_PREFIX}{name}"] = np.asarray(probabilities, dtype=np.float32)[:, index]
    return frame


def signature(classes: Sequence[str]) -> ModelSignature:
    """Input: the required column `text` (type `any`: see the module docstring); output: `label` (string)
    and `prob_<class>` (float) per class."""
    outputs = [ColSpec("string", LABEL_COLUMN), *(ColSpec("float", f"{PROBABILITY_PREFIX}{name}") for name in classes)]
    return ModelSignature(inputs=Schema([ColSpec(AnyType(), TEXT_COLUMN, required=True)]), outputs=Schema(outputs))


def input_example(texts: Sequence[str]) -> pd.DataFrame:
    """The logged input example: a frame with the `text` column (what `dataframe_split` requests look like)."""
    return pd.DataFrame({TEXT_COLUMN: list(texts)})


def model_artifacts(model_dir: Path | str) -> dict[str, str]:
    """The files the pyfunc bundles from an exported model directory (export.json only when present)."""
    model_dir = Path(model_dir)
    return {name: str(model_dir / file) for name, file in ARTIFACT_FILES.items()
            if name != "export_report" or (model_dir / file).is_file()}


class TextClassifierModel(mlflow.pyfunc.PythonModel):
    """A textrnn variant as an MLflow pyfunc: texts in (column `text`), label + per-class probabilities out.

    Runs through `textrnn.inference.OnnxClassifier` on the bundled `model.onnx` and `tokenizer.json`
    (class names live in the graph's metadata; the graph's sha256 is verified on load, so a corrupted
    download fails the load in one line). `model_config={"inference_device": "cpu"|"cuda"|"auto"}` picks
    the onnxruntime device (default auto: CUDA when it really comes up, else CPU).
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from textrnn.inference import OnnxClassifier

        device = (context.model_config or {}).get(INFERENCE_DEVICE, "auto")
        self.classifier = OnnxClassifier(context.artifacts["tokenizer"], context.artifacts["onnx_model"], device=device)

    # `pd.DataFrame` is what schema enforcement hands us for every accepted input, and it is a hint
    # mlflow does not derive a signature from: ours stands.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """Texts from `model_input` (see `texts_from_input`) -> `prediction_frame`'s DataFrame."""
        texts = texts_from_input(model_input)
        try:
            labels, probabilities = self.classifier.predict(texts)
        except TextrnnError as error:  # e.g. a lone surrogate ("\udc80" in JSON): the client's input
            raise invalid_input(str(error).replace("texts[", f"{TEXT_COLUMN}[")) from None
        return prediction_frame(labels, probabilities, self.classifier.classes)


def model_spec(model_dir: Path | str, classes: Sequence[str], example_texts: Sequence[str]) -> dict[str, Any]:
    """Keyword arguments for `mlflow.pyfunc.log_model` / `save_model` describing the exported model in
    `model_dir`: the python model, its artifacts, textrnn's own code (`code_paths`, so it loads without
    textrnn installed), the signature, the input example, the default model_config and the contract.
    The caller adds `name`, `pip_requirements` and its own `metadata` entries."""
    import textrnn
    from textrnn import pyfunc_model

    return {
        # Models from code (pyfunc_model.py): no pickled instance in the logged model. Imported here, not
        # just named, so the export's DVC stage records it among the modules it depends on.
        "python_model": pyfunc_model.__file__,
        "artifacts": model_artifacts(model_dir),
        "code_paths": [str(Path(textrnn.__file__).parent)],
        "signature": signature(classes),
        "input_example": input_example(example_texts),
        # Declared so load_model(model_config=...) may override it; mlflow also shows it as a run param,
        # hence a name that cannot be mistaken for the training device tag.
        "model_config": {INFERENCE_DEVICE: "auto"},
        "metadata": {"classes": list(classes), "input_contract": INPUT_CONTRACT},
    }
