"""MLflow: runs, the pyfunc model, the registry and gated promotion (the one module that imports mlflow).

The pipeline steps (`textrnn.steps`) call this module only when `tracking.enabled` is true; the core
modules never import it.

Where runs go
    `MLFLOW_TRACKING_URI` when set. Otherwise a local store in the working directory (the project root,
    where the CLI, DVC and Prefect run): `sqlite:////<abs>/mlflow.db` (four slashes: `sqlite:///` plus
    an absolute path) with artifacts under `<abs>/mlartifacts/`; open it with
    `mlflow ui --backend-store-uri sqlite:///mlflow.db`. A remote http(s) server is probed once per
    stage (`GET <uri>/health`, PROBE_TIMEOUT_S): when nothing answers, the stage stops with one line
    instead of minutes of retries.

How runs and ids flow between stages
    One variant = one MLflow run, named after the variant. `train` creates it (under a parent run, see
    below) and records `{run_id, experiment_id, tracking_uri}` in `models/<V>/mlflow_run.json`, next to
    the model it describes; `export` and `evaluate` reopen that run id and log into it, so a stage run
    alone from the CLI or DVC still lands in its variant's run. `export` logs the pyfunc model and tags
    the run with its `model_id`; `register` turns that logged model into a registry version.
    The parent run groups one pipeline invocation: `steps.pipeline_run` (a Prefect flow, a script)
    passes its id down or exports it as `TEXTRNN_MLFLOW_PARENT_RUN_ID` for subprocesses; under
    `dvc exp run` (which sets `DVC_EXP_NAME`) the first train stage creates a parent named after the
    experiment and later stages find it by tag.

Promotion
    The alias `champion` moves only to a candidate whose ONNX parity passed and whose `test_accuracy`
    beats the champion's by more than zero and at least `registry.min_delta` (read from the version tags
    that `register` wrote). Every decision is written as version tags (`promotion_decision`,
    `promotion_reason`), as the registered model's `last_promotion` tag (JSON), and returned.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Read by mlflow at import and client creation: no usage reporting, and a dead server must not hold a
# stage for minutes of retries (the default is 7 retries with exponential backoff).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")

import mlflow  # noqa: E402
import mlflow.pyfunc  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from textrnn.errors import TextrnnError  # noqa: E402
from textrnn.files import atomic_dir, read_json, sha256_file, write_json  # noqa: E402

if TYPE_CHECKING:
    from textrnn.config import Config

log = logging.getLogger("textrnn")

PARENT_RUN_ENV = "TEXTRNN_MLFLOW_PARENT_RUN_ID"
DVC_EXP_ENV = "DVC_EXP_NAME"
RUN_FILE = "mlflow_run.json"
LOCAL_DB, LOCAL_ARTIFACTS = "mlflow.db", "mlartifacts"
PROBE_TIMEOUT_S = 5.0
CHAMPION = "champion"
MODEL_NAME = "model"  # the pyfunc's name inside its run
PROBABILITY_PREFIX = "prob_"
INFERENCE_DEVICE = "inference_device"  # the pyfunc's model_config key: auto | cpu | cuda
# The registry's dataset digest column holds 36 characters; the full sha256 goes in the input's tags.
DIGEST_CHARS = 32
SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}


class TrackingError(TextrnnError):
    """MLflow is unreachable, or a run/model it needs is missing; stated in one line."""


# --------------------------------------------------------------------------------------- connection


def local_uri(workdir: Path | None = None) -> str:
    """`sqlite:////<abs workdir>/mlflow.db` (workdir = cwd): `sqlite:///` + an absolute path."""
    return f"sqlite:///{(workdir or Path.cwd()).resolve() / LOCAL_DB}"


def tracking_uri(workdir: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` when set, else `local_uri(workdir)`."""
    return os.environ.get("MLFLOW_TRACKING_URI", "").strip() or local_uri(workdir)


def _redacted(uri: str) -> str:
    """`uri` without a `user:password@` part, for messages."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _tls_context() -> ssl.SSLContext | None:
    """The TLS settings mlflow itself would use: MLFLOW_TRACKING_INSECURE_TLS / MLFLOW_TRACKING_SERVER_CERT_PATH."""
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return ssl._create_unverified_context()  # noqa: S323 - the user asked mlflow for exactly this
    cert_path = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    return ssl.create_default_context(cafile=cert_path) if cert_path else None


def check_reachable(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise TrackingError (one line) unless an http(s) tracking server answers `GET /health` within
    `timeout_s`.

    Any HTTP answer counts (a proxy's 401 or 404 still proves the host is there); only no answer at
    all fails. Other URI schemes (sqlite, file, databricks) are not probed.
    """
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s, context=_tls_context()):
            pass
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingError(
            f"MLflow tracking server {_redacted(uri)} is unreachable ({reason}); start it, fix MLFLOW_TRACKING_URI, "
            "or unset it to log to ./mlflow.db (tracking.enabled=false turns tracking off)"
        ) from None


def connect(cfg: Config) -> str:
    """Point mlflow at the tracking URI, check it answers, and return the experiment's id.

    The experiment `tracking.experiment` is created when missing; on the local default store its
    artifacts go to `./mlartifacts/` (a server chooses its own artifact root).
    """
    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    with _one_line_errors(f"MLflow at {_redacted(uri)}"):
        experiment = client.get_experiment_by_name(cfg.tracking.experiment)
        if experiment is not None:
            return experiment.experiment_id
        location = (Path.cwd().resolve() / LOCAL_ARTIFACTS).as_uri() if uri == local_uri() else None
        try:
            return client.create_experiment(cfg.tracking.experiment, artifact_location=location)
        except MlflowException:
            # Another process created it between our lookup and create.
            experiment = client.get_experiment_by_name(cfg.tracking.experiment)
            if experiment is None:
                raise
            return experiment.experiment_id


@contextlib.contextmanager
def _one_line_errors(what: str) -> Iterator[None]:
    """Turn mlflow's (often multi-line) errors into a TrackingError with one line."""
    try:
        yield
    except MlflowException as error:
        first = str(error.message).strip().splitlines()[0] if error.message else type(error).__name__
        raise TrackingError(f"{what}: {first}") from error


# ------------------------------------------------------------------------------------ provenance


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"a": {"b": 1}}` -> `{"a.b": "1"}`; lists become JSON so they stay one comparable param."""
    flat: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(list(value))
        else:
            flat[name] = str(value)
    return flat


def shared_params(cfg: Config) -> dict[str, str]:
    """Every config key that shapes a model except the variants: seed, data.*, tokenizer.*, buckets.*, train.*.

    Paths, tracking, registry and orchestration settings say where things go, not what is learnt.
    """
    raw = cfg.model_dump(mode="json", include={"seed", "data", "tokenizer", "buckets", "train"})
    return flatten(raw)


def variant_params(cfg: Config, variant: str) -> dict[str, str]:
    """The variant's full flattened config: `shared_params` plus `variant.name` and `variant.*`."""
    return {
        **shared_params(cfg),
        "variant.name": variant,
        **flatten(cfg.variant(variant).model_dump(mode="json"), "variant."),
    }


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_tags() -> dict[str, str]:
    """`git_commit` and `git_dirty` (tracked files changed) of the working directory; `unknown` outside git."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": commit,
        "git_dirty": "unknown" if dirty is None else str(bool(dirty)).lower(),
        "mlflow.source.git.commit": commit,  # the UI's "Source" column
    }


def _package_version(*names: str) -> str:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def split_digests(cfg: Config) -> dict[str, str]:
    """sha256 of each prepared split file (`data/prepared/<split>.parquet`) that exists."""
    digests = {}
    for split in SPLIT_CONTEXTS:
        path = cfg.paths.prepared / f"{split}.parquet"
        if path.is_file():
            digests[split] = sha256_file(path)
    return digests


def data_sha256(cfg: Config) -> str:
    """One fingerprint of the prepared data: sha256 over the splits' sha256s (`unknown` if none exist)."""
    digests = split_digests(cfg)
    if not digests:
        return "unknown"
    joined = "\n".join(f"{split}:{digest}" for split, digest in sorted(digests.items()))
    return hashlib.sha256(joined.encode()).hexdigest()


def run_tags(cfg: Config) -> dict[str, str]:
    """Tags every textrnn run carries: git state, data fingerprint, library versions, DVC experiment."""
    tags = {
        **git_tags(),
        "data_sha256": data_sha256(cfg),
        "data_source": cfg.data.source,
        "torch_version": _package_version("torch"),
        "onnxruntime_version": _package_version("onnxruntime-gpu", "onnxruntime"),
        "textrnn_version": _package_version("textrnn"),
    }
    if os.environ.get(DVC_EXP_ENV):
        tags["dvc_exp_name"] = os.environ[DVC_EXP_ENV]
    return tags


# ------------------------------------------------------------------------------------------- runs


def run_file(cfg: Config, variant: str) -> Path:
    """`models/<V>/mlflow_run.json`: the variant's run id, written by `train`, read by later stages."""
    return cfg.paths.model_dir(variant) / RUN_FILE


def recorded_run(cfg: Config, variant: str) -> dict[str, str] | None:
    """The run recorded for `variant` on the current tracking URI, or None (no file, or another server)."""
    path = run_file(cfg, variant)
    if not path.is_file():
        return None
    record = read_json(path)
    if record.get("tracking_uri") != tracking_uri():
        return None
    return record


def start_pipeline_run(cfg: Config, name: str | None = None) -> str:
    """Create the parent run of one pipeline invocation and return its id (finish it with `end_pipeline_run`)."""
    experiment_id = connect(cfg)
    client = MlflowClient()
    with _one_line_errors("start pipeline run"):
        run = client.create_run(
            experiment_id,
            run_name=name or f"pipeline {time.strftime('%Y-%m-%d %H:%M:%S')}",
            tags={**run_tags(cfg), "run_kind": "pipeline", "variants": ",".join(cfg.variants)},
        )
        _log_params(client, run.info.run_id, shared_params(cfg))
    return run.info.run_id


def end_pipeline_run(run_id: str, succeeded: bool = True) -> None:
    """Mark the parent run FINISHED (or FAILED)."""
    with _one_line_errors("end pipeline run"):
        MlflowClient().set_terminated(run_id, "FINISHED" if succeeded else "FAILED")


def _dvc_parent_run(cfg: Config, experiment_id: str, exp_name: str) -> str:
    """The parent run of DVC experiment `exp_name`, created (already FINISHED: nobody sees the
    experiment end) by the first stage that asks."""
    client = MlflowClient()
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.run_kind = 'pipeline' AND tags.dvc_exp_name = '{exp_name}'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id, run_name=f"dvc {exp_name}", tags={**run_tags(cfg), "run_kind": "pipeline"}
    )
    _log_params(client, run.info.run_id, shared_params(cfg))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def resolve_parent(cfg: Config, experiment_id: str, parent_run_id: str | None) -> str | None:
    """The parent for a new variant run: the argument, else `TEXTRNN_MLFLOW_PARENT_RUN_ID`, else the
    DVC experiment's parent run (under `dvc exp run`), else None (a top-level run)."""
    if parent_run_id:
        return parent_run_id
    if os.environ.get(PARENT_RUN_ENV):
        return os.environ[PARENT_RUN_ENV]
    if os.environ.get(DVC_EXP_ENV):
        return _dvc_parent_run(cfg, experiment_id, os.environ[DVC_EXP_ENV])
    return None


def _create_variant_run(cfg: Config, variant: str, experiment_id: str, parent_run_id: str | None) -> str:
    """A new run for `variant` with its params and tags, recorded in `models/<V>/mlflow_run.json`."""
    client = MlflowClient()
    parent = resolve_parent(cfg, experiment_id, parent_run_id)
    tags = {**run_tags(cfg), "run_kind": "variant", "variant": variant}
    if parent:
        tags["mlflow.parentRunId"] = parent  # the UI nests runs by this tag
    run = client.create_run(experiment_id, run_name=variant, tags=tags)
    _log_params(client, run.info.run_id, variant_params(cfg, variant))
    client.set_terminated(run.info.run_id)  # each stage reopens it; between stages it is at rest
    write_json(
        run_file(cfg, variant),
        {"run_id": run.info.run_id, "experiment_id": experiment_id, "tracking_uri": tracking_uri(),
         "parent_run_id": parent},
    )
    return run.info.run_id


def _log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    """Log params not yet on the run; a changed value (e.g. more epochs on --resume) is kept as it was
    and logged as a warning, since MLflow params are immutable."""
    existing = client.get_run(run_id).data.params
    new = {key: value for key, value in params.items() if key not in existing}
    changed = sorted(key for key, value in params.items() if key in existing and existing[key] != value)
    if changed:
        log.warning("mlflow run=%s keeps its first values of params %s", run_id, ", ".join(changed))
    if new:
        client.log_batch(run_id, params=[mlflow.entities.Param(key, value) for key, value in new.items()])


@contextlib.contextmanager
def variant_run(
    cfg: Config, variant: str, *, stage: str, parent_run_id: str | None = None, new: bool = False
) -> Iterator[str]:
    """Make the variant's run the active MLflow run for one stage; yields its run id.

    With `new` (a fresh `train`) a new run is created; otherwise the run recorded in
    `models/<V>/mlflow_run.json` is reopened, or created when there is none for this tracking URI.
    The run ends FINISHED, or FAILED when the stage raises. Mlflow errors become one-line TrackingErrors.
    """
    experiment_id = connect(cfg)
    with _one_line_errors(f"{variant}: MLflow ({stage})"):
        record = None if new else recorded_run(cfg, variant)
        run_id = record["run_id"] if record else _create_variant_run(cfg, variant, experiment_id, parent_run_id)
        with mlflow.start_run(run_id=run_id):
            mlflow.set_tag(f"stage_{stage}", time.strftime("%Y-%m-%dT%H:%M:%S"))
            yield run_id


# ---------------------------------------------------------------------------------- stage logging


def _dataset_input(cfg: Config, split: str, digest: str) -> None:
    """Log a prepared split as a dataset input of the active run (source = its file, digest = its sha256)."""
    import mlflow.data

    from textrnn.data import read_split

    path = cfg.paths.prepared / f"{split}.parquet"
    with warnings.catch_warnings():
        # A local path matches two registered source types that mean the same thing, and the int64
        # `label` column triggers a hint about missing values; neither applies to a prepared split.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        dataset = mlflow.data.from_pandas(
            read_split(cfg.paths.prepared, split),
            source=str(path.resolve()),
            targets="label",
            name=f"{cfg.data.source}-{split}",
            digest=digest[:DIGEST_CHARS],
        )
        _log_input_once_more_on_race(dataset, SPLIT_CONTEXTS[split], {"sha256": digest})


# What the store says when two runs create the same dataset row at once (sqlite, PostgreSQL, MySQL).
_DUPLICATE_ROW = ("UNIQUE constraint failed", "duplicate key value", "Duplicate entry", "IntegrityError")


def _log_input_once_more_on_race(dataset: Any, context: str, tags: dict[str, str]) -> None:
    """`mlflow.log_input`, retried once when another run inserted the same dataset concurrently.

    The tracking store checks for an existing dataset row and then inserts it, without a lock: variants
    logging the same split at the same moment (Prefect's concurrent variants, or two workers) collide on
    the unique key. The row now exists, so the second attempt links to it.
    """
    try:
        mlflow.log_input(dataset, context=context, tags=tags)
    except MlflowException as error:
        if not any(marker in str(error) for marker in _DUPLICATE_ROW):
            raise
        time.sleep(0.2)
        mlflow.log_input(dataset, context=context, tags=tags)


def log_datasets(cfg: Config, splits: Sequence[str]) -> None:
    """Log the given prepared splits as dataset inputs of the active run."""
    digests = split_digests(cfg)
    for split in splits:
        if split in digests:
            _dataset_input(cfg, split, digests[split])


def log_training_inputs(cfg: Config, variant: str) -> None:
    """Before training: the variant's params (a resumed run warns about changed ones), the train/val
    datasets, the tokenizer and the bucket statistics."""
    _log_params(MlflowClient(), mlflow.active_run().info.run_id, variant_params(cfg, variant))
    log_datasets(cfg, ["train", "val"])
    _log_artifact_if_exists(cfg.paths.tokenizer, "tokenizer")
    _log_artifact_if_exists(cfg.paths.encoded / "buckets.json", "data")


def log_epoch(variant: str, metrics: dict[str, float]) -> None:
    """`train_variant`'s on_epoch callback: the epoch's metrics at step = epoch on the active run."""
    named = {"epoch_seconds" if key == "seconds" else key: float(value) for key, value in metrics.items()}
    epoch = int(named.pop("epoch"))
    mlflow.log_metrics(named, step=epoch)


def log_training_summary(cfg: Config, variant: str, summary: dict[str, Any]) -> None:
    """After training: best-epoch metrics, the device tag and train.json."""
    mlflow.log_metrics(
        {
            "best_val_loss": float(summary["best_val_loss"]),
            "best_val_accuracy": float(summary["best_val_accuracy"]),
            "best_epoch": float(summary["best_epoch"]),
            "epochs_run": float(summary["epochs_run"]),
            "train_wall_seconds": float(summary["wall_seconds"]),
        }
    )
    mlflow.set_tag("device", summary["device"])
    _log_artifact_if_exists(cfg.paths.metrics_dir(variant) / "train.json", "metrics")


def log_export(report: dict[str, Any], report_file: Path) -> None:
    """The parity check's outcome: metric `onnx_parity_max_abs_diff`, tag `onnx_parity_passed`, export.json."""
    if "max_abs_diff" in report:
        mlflow.log_metric("onnx_parity_max_abs_diff", float(report["max_abs_diff"]))
    mlflow.set_tag("onnx_parity_passed", str(bool(report.get("passed"))).lower())
    _log_artifact_if_exists(report_file, "onnx")


def log_evaluation(cfg: Config, variant: str, report: dict[str, Any]) -> None:
    """Test metrics, the inference provider, the test dataset, eval.json and the plots."""
    metrics = {key: float(report[key]) for key in ("test_accuracy", "test_macro_f1", "inference_latency_ms_b1")
               if report.get(key) is not None}
    mlflow.log_metrics(metrics)
    if report.get("provider"):
        mlflow.set_tag("onnx_provider", report["provider"])
    log_datasets(cfg, ["test"])
    _log_artifact_if_exists(cfg.paths.metrics_dir(variant) / "eval.json", "metrics")
    for plot in ("confusion_matrix.png", "learning_curves.png"):
        _log_artifact_if_exists(cfg.paths.plots_dir(variant) / plot, "plots")


def _log_artifact_if_exists(path: Path, artifact_dir: str) -> None:
    if Path(path).is_file():
        mlflow.log_artifact(str(path), artifact_dir)
    else:
        log.warning("mlflow artifact missing path=%s", path)


# ------------------------------------------------------------------------------------ pyfunc model


def texts_from_input(model_input: Any) -> list[str]:
    """Raw texts from what a pyfunc may receive: a DataFrame (its `text` column, else its only
    column), a Series, a list of strings, or one string."""
    if isinstance(model_input, pd.DataFrame):
        column = model_input["text"] if "text" in model_input.columns else model_input.iloc[:, 0]
        return column.tolist()
    if isinstance(model_input, pd.Series):
        return model_input.tolist()
    if isinstance(model_input, str):
        return [model_input]
    return list(model_input)


def prediction_frame(labels: Sequence[str], probabilities: Any, classes: Sequence[str]) -> pd.DataFrame:
    """The pyfunc's output: `label` plus one `prob_<class>` column per class, rows in input order."""
    frame = pd.DataFrame({"label": list(labels)})
    for index, name in enumerate(classes):
        frame[f"{PROBABILITY_PREFIX}{name}"] = probabilities[:, index]
    return frame


class TextClassifierModel(mlflow.pyfunc.PythonModel):
    """A textrnn variant as an MLflow pyfunc: raw texts in, label + per-class probabilities out.

    Runs through `textrnn.inference.OnnxClassifier` on the bundled `model.onnx` and `tokenizer.json`
    (class names live in the graph's metadata). `model_config={"inference_device": "cpu"|"cuda"|"auto"}`
    picks the onnxruntime device (default auto: CUDA when it really comes up, else CPU).
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from textrnn.inference import OnnxClassifier

        device = (context.model_config or {}).get(INFERENCE_DEVICE, "auto")
        self.classifier = OnnxClassifier(context.artifacts["tokenizer"], context.artifacts["onnx_model"], device=device)

    # `pd.DataFrame` is what schema enforcement hands us for every accepted input (a list of strings
    # becomes a one-column frame), and it is a hint mlflow does not derive a signature from: ours stands.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """Texts from `model_input` (see `texts_from_input`) -> `prediction_frame`'s DataFrame."""
        labels, probabilities = self.classifier.predict(texts_from_input(model_input))
        return prediction_frame(labels, probabilities, self.classifier.classes)


def pip_requirements() -> list[str]:
    """What the served model imports, pinned to this environment (explicit: no slow inference)."""
    names = ("mlflow", "onnxruntime-gpu", "tokenizers", "numpy", "pandas", "cloudpickle")
    return [f"{name}=={_package_version(name)}" for name in names]


def _input_example(cfg: Config) -> pd.DataFrame:
    """Two real test texts (the first rows of the prepared test split), or fixed ones without it."""
    try:
        from textrnn.data import read_split

        texts = read_split(cfg.paths.prepared, "test")["text"].head(2).tolist()
    except TextrnnError:
        texts = ["Stocks rally as the central bank holds rates", "Home side beat the champions 2-1"]
    return pd.DataFrame({"text": texts})


def log_model(cfg: Config, variant: str) -> str:
    """Log the exported variant as the pyfunc `model` of the active run; returns its MLflow model id.

    The model bundles `models/<V>/model.onnx` and `tokenizer.json`, textrnn's own code (`code_paths`,
    so it loads without textrnn installed), a signature inferred from an input example, the example
    itself, and pinned pip requirements. Tags the run with `model_id` for `register_variant`.
    """
    from mlflow.models import infer_signature

    import textrnn
    from textrnn.inference import OnnxClassifier

    model_dir = cfg.paths.model_dir(variant)
    artifacts = {"onnx_model": str(model_dir / "model.onnx"), "tokenizer": str(model_dir / "tokenizer.json")}
    example = _input_example(cfg)
    classifier = OnnxClassifier(artifacts["tokenizer"], artifacts["onnx_model"], device="cpu")
    labels, probabilities = classifier.predict(example["text"].tolist())
    # Inferred from a plain list of texts: an unnamed string column, so the model accepts a list of
    # strings as well as a one-column DataFrame (a named `text` column would reject lists).
    signature = infer_signature(example["text"].tolist(), prediction_frame(labels, probabilities, classifier.classes))
    info = mlflow.pyfunc.log_model(
        name=MODEL_NAME,
        python_model=TextClassifierModel(),
        artifacts=artifacts,
        code_paths=[str(Path(textrnn.__file__).parent)],
        signature=signature,
        input_example=example,
        pip_requirements=pip_requirements(),
        metadata={"variant": variant, "classes": list(classifier.classes)},
        # Declared so load_model(model_config=...) may override it; mlflow also shows it as a run param,
        # hence a name that cannot be mistaken for the training device tag.
        model_config={INFERENCE_DEVICE: "auto"},
    )
    mlflow.set_tag("model_id", info.model_id)
    return info.model_id


def download_model(model_uri: str, destination: Path | str) -> Path:
    """Download an MLflow model logged by `log_model` (`models:/name@alias`, `models:/name/3`,
    `runs:/<id>/model`, ...) to `destination`, replacing what was there; returns the directory holding
    its `model.onnx` and `tokenizer.json` (`destination/artifacts`).

    Raises TrackingError (one line) when the server is unreachable, the model does not exist, or it is
    not a textrnn model.
    """
    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    destination = Path(destination)
    # Download beside the target and swap it in whole: an alias may have moved since the last download.
    with _one_line_errors(model_uri), atomic_dir(destination) as staging:
        mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(staging))
    bundled = destination / "artifacts"
    if not (bundled / "model.onnx").is_file() or not (bundled / "tokenizer.json").is_file():
        raise TrackingError(f"{model_uri}: not a textrnn model (no artifacts/model.onnx and tokenizer.json)")
    return bundled


# -------------------------------------------------------------------------------------- registry

# Run metrics copied onto each registry version, so promotion and the registry UI need no run lookups.
VERSION_METRICS = ("test_accuracy", "test_macro_f1", "onnx_parity_max_abs_diff", "inference_latency_ms_b1")


def register_variant(cfg: Config, variant: str) -> dict[str, Any]:
    """Register the variant's logged pyfunc as a version of `registry.model_name`, tagged with the
    variant, its metrics, parity outcome, run id and data fingerprint. Re-registering the same logged
    model returns the existing version instead of adding a duplicate.

    Raises TrackingError when the variant has no run, no logged model (`textrnn export`) or no
    `test_accuracy` (`textrnn evaluate`).
    """
    connect(cfg)
    record = recorded_run(cfg, variant)
    if record is None:
        where = _redacted(tracking_uri())
        raise TrackingError(f"{variant}: no MLflow run on {where} (run `textrnn train` with tracking on)")
    client = MlflowClient()
    name = cfg.registry.model_name
    with _one_line_errors(f"{variant}: register {name}"):
        run = client.get_run(record["run_id"])
        model_id = run.data.tags.get("model_id")
        if not model_id:
            raise TrackingError(f"{variant}: run {record['run_id']} has no logged model (run `textrnn export`)")
        if "test_accuracy" not in run.data.metrics:
            raise TrackingError(f"{variant}: run {record['run_id']} has no test_accuracy (run `textrnn evaluate`)")
        tags = _version_tags(variant, run)
        version = _existing_version(client, name, run.info.run_id, model_id)
        if version is None:
            version = mlflow.register_model(f"models:/{model_id}", name, tags=tags)
        else:
            for key, value in tags.items():
                client.set_model_version_tag(name, version.version, key, value)
    log.info("registered model=%s version=%s variant=%s", name, version.version, variant)
    return {"model_name": name, "version": str(version.version), "variant": variant, "run_id": run.info.run_id,
            "model_id": model_id, **tags}


def _version_tags(variant: str, run: Any) -> dict[str, str]:
    metrics, tags = run.data.metrics, run.data.tags
    version_tags = {key: repr(float(metrics[key])) for key in VERSION_METRICS if key in metrics}
    version_tags.update(
        variant=variant,
        onnx_parity_passed=tags.get("onnx_parity_passed", "false"),
        run_id=run.info.run_id,
        data_sha256=tags.get("data_sha256", "unknown"),
        git_commit=tags.get("git_commit", "unknown"),
    )
    return version_tags


def _existing_version(client: MlflowClient, name: str, run_id: str, model_id: str) -> Any | None:
    try:
        versions = client.search_model_versions(f"name = '{name}' AND run_id = '{run_id}'")
    except MlflowException:
        return None  # no registered model yet
    # Over REST `model_id` comes back empty; the source URI names the logged model either way.
    source = f"models:/{model_id}"
    return next((v for v in versions if v.model_id == model_id or v.source == source), None)


def _candidate(version: Any) -> dict[str, Any]:
    """A version's promotion facts from its tags: version, variant, test_accuracy, parity."""
    tags = version.tags or {}

    def number(key: str) -> float | None:
        return float(tags[key]) if key in tags else None

    return {
        "version": str(version.version),
        "variant": tags.get("variant", "?"),
        "test_accuracy": number("test_accuracy"),
        "onnx_parity_passed": tags.get("onnx_parity_passed") == "true",
        "onnx_parity_max_abs_diff": number("onnx_parity_max_abs_diff"),
    }


def decide_promotion(
    candidates: Sequence[dict[str, Any]], champion: dict[str, Any] | None, min_delta: float
) -> dict[str, Any]:
    """Pick the version the `champion` alias should point to, and say why (no side effects).

    Candidates without `test_accuracy` or with failed ONNX parity are rejected; the current champion
    is not its own challenger. The best remaining one (highest accuracy, newest on ties) is promoted
    when there is no champion, or when it beats the champion's accuracy by more than zero and by at
    least `min_delta`. Returns {promoted, version, variant, reason, champion_before, rejected, ...}.
    """
    rejected = []
    eligible = []
    for candidate in candidates:
        if champion is not None and candidate["version"] == champion["version"]:
            continue
        if candidate["test_accuracy"] is None:
            rejected.append({**candidate, "reason": "no test_accuracy tag (run `textrnn register` after evaluate)"})
        elif not candidate["onnx_parity_passed"]:
            rejected.append({**candidate, "reason": "ONNX parity did not pass"})
        else:
            eligible.append(candidate)
    decision: dict[str, Any] = {"champion_before": champion, "min_delta": min_delta, "rejected": rejected}
    if not eligible:
        why = "; ".join(f"v{r['version']} ({r['variant']}): {r['reason']}" for r in rejected) or "no new versions"
        return {**decision, "promoted": False, "version": None, "variant": None,
                "reason": f"no eligible candidate: {why}"}
    best = max(eligible, key=lambda c: (c["test_accuracy"], int(c["version"])))
    decision.update(version=best["version"], variant=best["variant"], test_accuracy=best["test_accuracy"])
    if champion is None:
        return {**decision, "promoted": True,
                "reason": f"v{best['version']} ({best['variant']}) becomes the first champion "
                          f"(test_accuracy {best['test_accuracy']:.4f})"}
    delta = best["test_accuracy"] - (champion["test_accuracy"] or 0.0)
    decision["delta"] = delta
    if delta > 0 and delta >= min_delta:
        return {**decision, "promoted": True,
                "reason": f"v{best['version']} ({best['variant']}) test_accuracy {best['test_accuracy']:.4f} beats "
                          f"champion v{champion['version']} ({champion['variant']}) {champion['test_accuracy']:.4f} "
                          f"by {delta:+.4f} >= min_delta {min_delta:g}"}
    return {**decision, "promoted": False,
            "reason": f"best candidate v{best['version']} ({best['variant']}) test_accuracy "
                      f"{best['test_accuracy']:.4f} does not beat champion v{champion['version']} "
                      f"({champion['variant']}) {champion['test_accuracy']:.4f} by more than zero and at least "
                      f"min_delta {min_delta:g} (delta {delta:+.4f})"}


def _latest_per_variant(versions: Sequence[Any]) -> list[Any]:
    """The newest READY version of each variant (older ones already had their chance)."""
    latest: dict[str, Any] = {}
    for version in versions:
        if version.status != "READY":
            continue
        variant = (version.tags or {}).get("variant", f"?{version.version}")
        if variant not in latest or int(version.version) > int(latest[variant].version):
            latest[variant] = version
    return list(latest.values())


def current_champion(client: MlflowClient, name: str) -> Any | None:
    """The version the `champion` alias points to, or None when the alias is not set."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def promote(cfg: Config, versions: Sequence[str] | None = None) -> dict[str, Any]:
    """Move alias `champion` of `registry.model_name` to the best candidate if it passes the gates.

    Candidates are `versions` when given, else the newest version of each variant. The decision
    (see `decide_promotion`) is applied (alias set, never stages), recorded as tags on the candidate
    version and as the registered model's `last_promotion` tag, and returned with `model_name` and
    `champion_after`. Raises TrackingError when the model or a named version does not exist.
    """
    connect(cfg)
    client = MlflowClient()
    name = cfg.registry.model_name
    with _one_line_errors(f"promote {name}"):
        if versions:
            chosen = [client.get_model_version(name, str(version)) for version in versions]
        else:
            chosen = _latest_per_variant(client.search_model_versions(f"name = '{name}'"))
        champion_version = current_champion(client, name)
        champion = _candidate(champion_version) if champion_version is not None else None
        decision = decide_promotion([_candidate(v) for v in chosen], champion, cfg.registry.min_delta)
        if decision["promoted"]:
            client.set_registered_model_alias(name, CHAMPION, decision["version"])
        _record_decision(client, name, decision)
        after = current_champion(client, name)
    decision.update(model_name=name, champion_after=str(after.version) if after is not None else None)
    log.info("promotion model=%s promoted=%s reason=%s", name, decision["promoted"], decision["reason"])
    return decision


def _record_decision(client: MlflowClient, name: str, decision: dict[str, Any]) -> None:
    """Tags: the candidate version's `promotion_decision`/`promotion_reason`, the model's `last_promotion`."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    if decision["version"] is not None:
        outcome = "promoted" if decision["promoted"] else "rejected"
        client.set_model_version_tag(name, decision["version"], "promotion_decision", f"{outcome} {stamp}")
        client.set_model_version_tag(name, decision["version"], "promotion_reason", decision["reason"])
    for rejected in decision["rejected"]:
        client.set_model_version_tag(name, rejected["version"], "promotion_decision", f"rejected {stamp}")
        client.set_model_version_tag(name, rejected["version"], "promotion_reason", rejected["reason"])
    summary = {key: decision[key] for key in ("promoted", "version", "variant", "reason")}
    client.set_registered_model_tag(name, "last_promotion", json.dumps({**summary, "at": stamp})[:4900])
