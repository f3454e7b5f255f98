"""MLflow tracking against a real `mlflow server` on loopback, and the pipeline without MLflow at all.

One module-scoped workspace trains, exports, evaluates and registers two variants (`bag`, `gru`, one
epoch on the sample) under one parent run; the tests then read what landed on the server: runs, params,
tags, datasets, artifacts, registry versions, the `champion` alias, the pyfunc and its HTTP server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import PARAMS, SMALL_SAMPLE, make_config, path_overrides
from mlflow_server import Server, free_port, start_model_server, start_tracking_server
from textrnn import steps
from textrnn.config import Config
from textrnn.export import PARITY_ATOL
from textrnn.files import read_json, sha256_file

pytestmark = pytest.mark.slow

VARIANTS = ("bag", "gru")
MODEL_NAME = "agnews-rnn"
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "samples_per_second", "padding_efficiency")
FINAL_METRICS = ("test_accuracy", "test_macro_f1", "onnx_parity_max_abs_diff", "inference_latency_ms_b1")
RUN_TAGS = ("variant", "git_commit", "git_dirty", "data_sha256", "device", "onnx_provider", "torch_version",
            "onnxruntime_version")
TEXTS = ["the home side beat the champions in the final", "", "stocks fell as the bank raised rates",
         "new chip doubles battery life " * 80, "zzqx unknownword"]

runner = CliRunner()


def cli(workdir: Path, *args: str, overrides: tuple[str, ...] = ()):
    from textrnn.cli import app

    sets = [a for o in [*SMALL_SAMPLE, *path_overrides(workdir), *overrides] for a in ("--set", o)]
    return runner.invoke(app, [*args, "--params", str(PARAMS), *sets])


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real tracking server (sqlite, proxied artifacts, one worker) for the whole session; stopped by PID."""
    server = start_tracking_server(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()


@dataclass
class Tracked:
    cfg: Config
    server: Server
    parent_run_id: str
    results: dict[str, dict[str, dict]]  # variant -> step -> returned dict
    first_promotion: dict

    @property
    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(self.server.url)

    def run_id(self, variant: str) -> str:
        return self.results[variant]["train"]["mlflow_run_id"]

    def version(self, variant: str) -> str:
        return self.results[variant]["register"]["version"]

    @property
    def better(self) -> str:
        return max(VARIANTS, key=lambda v: self.results[v]["evaluate"]["test_accuracy"])

    @property
    def worse(self) -> str:
        return min(VARIANTS, key=lambda v: self.results[v]["evaluate"]["test_accuracy"])


@pytest.fixture(scope="module")
def tracked(mlflow_server: Server, encoded_sample: Path, tmp_path_factory: pytest.TempPathFactory):
    """Both variants through train -> export -> evaluate -> register under one parent run, then promote."""
    import mlflow

    workdir = tmp_path_factory.mktemp("tracked") / "ws"
    shutil.copytree(encoded_sample, workdir)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)  # steps run inside their workspace (lineage records paths relative to it)
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
        patch.delenv("TEXTRNN_MLFLOW_PARENT_RUN_ID", raising=False)
        patch.delenv("DVC_EXP_NAME", raising=False)
        # System metrics every 0.02 s instead of 10 (MLflow's setting): MLflow's monitor logs a sample only
        # once an interval has passed, and `bag` trains one epoch here in well under a second (at 0.2 s a
        # fast CI machine once finished it before the first sample).
        patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.02")
        cfg = make_config(workdir, "tracking.enabled=true", "train.epochs=1")
        results: dict[str, dict[str, dict]] = {}
        with steps.pipeline_run(cfg, "test pipeline") as parent_run_id:
            for variant in VARIANTS:
                results[variant] = {
                    "train": steps.train_step(cfg, variant),
                    "export": steps.export_step(cfg, variant),
                    "evaluate": steps.evaluate_step(cfg, variant, device="cpu"),
                    "register": steps.register_step(cfg, variant),
                }
        accuracies = {v: results[v]["evaluate"]["test_accuracy"] for v in VARIANTS}
        assert len(set(accuracies.values())) == 2, f"the test needs two different accuracies, got {accuracies}"
        first_promotion = steps.promote_step(cfg)
        mlflow.set_tracking_uri(mlflow_server.url)
        yield Tracked(cfg, mlflow_server, parent_run_id, results, first_promotion)


@pytest.fixture(autouse=True)
def _in_the_tracked_workspace(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests on the tracked workspace run inside it, as its steps did."""
    if "tracked" in request.fixturenames:
        monkeypatch.chdir(request.getfixturevalue("tracked").cfg.paths.models.parent)


def ours(metric_keys) -> set[str]:
    """The metric keys the pipeline logs, without MLflow's `system/` samples: how many of those a run has
    depends on how long it trained, not on what the pipeline logs."""
    return {key for key in metric_keys if not key.startswith("system/")}


# ----------------------------------------------------------------------------------------- runs


def test_training_runs_record_system_metrics(tracked: Tracked) -> None:
    for variant in VARIANTS:
        metrics = tracked.client.get_run(tracked.run_id(variant)).data.metrics
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics), variant


def test_one_parent_run_with_a_nested_run_per_variant(tracked: Tracked) -> None:
    client = tracked.client
    parent = client.get_run(tracked.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["run_kind"] == "pipeline"
    assert parent.data.params["train.epochs"] == "1"
    for variant in VARIANTS:
        run = client.get_run(tracked.run_id(variant))
        assert run.info.run_name == variant and run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == tracked.parent_run_id
        assert read_json(tracked.cfg.paths.model_dir(variant) / "mlflow_run.json")["run_id"] == run.info.run_id


def test_every_variant_logs_the_same_metrics_params_and_tags(tracked: Tracked) -> None:
    client = tracked.client
    runs = {variant: client.get_run(tracked.run_id(variant)) for variant in VARIANTS}
    metric_keys = {variant: ours(run.data.metrics) for variant, run in runs.items()}
    param_keys = {variant: set(run.data.params) for variant, run in runs.items()}
    assert metric_keys["bag"] == metric_keys["gru"] and param_keys["bag"] == param_keys["gru"]
    for variant, run in runs.items():
        assert set(EPOCH_METRICS) | set(FINAL_METRICS) <= metric_keys[variant]
        for key in EPOCH_METRICS:
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1], key
        evaluation = tracked.results[variant]["evaluate"]
        assert run.data.metrics["test_accuracy"] == pytest.approx(evaluation["test_accuracy"])
        assert run.data.metrics["onnx_parity_max_abs_diff"] <= PARITY_ATOL
        params = run.data.params
        config = tracked.cfg.variant(variant).config
        assert params["variant.name"] == variant and params["variant.cell"] == config.cell
        assert params["variant.hidden"] == str(config.hidden) and params["variant.batch_size"] == str(config.batch_size)
        assert params["train.epochs"] == "1" and params["data.source"] == "sample"
        assert params["tokenizer.vocab_size"] == str(tracked.cfg.tokenizer.vocab_size)
        assert params["buckets.chunk_batches"] == str(tracked.cfg.buckets.chunk_batches)
        assert json.loads(params["data.classes"]) == list(tracked.cfg.data.classes)
        tags = run.data.tags
        assert set(RUN_TAGS) <= set(tags), set(RUN_TAGS) - set(tags)
        assert tags["variant"] == variant and tags["device"] == "cpu"
        assert tags["onnx_provider"] == "CPUExecutionProvider" and tags["onnx_parity_passed"] == "true"
        assert len(tags["data_sha256"]) == 64
        # Who ran it and from what, as MLflow's own start_run records; the logged model carries the variant's name.
        assert tags["mlflow.user"] and tags["mlflow.source.name"] and tags["mlflow.source.type"] == "LOCAL"
        assert client.get_logged_model(tags["model_id"]).name == variant


def test_prepared_splits_are_logged_as_dataset_inputs(tracked: Tracked) -> None:
    run = tracked.client.get_run(tracked.run_id("gru"))
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"sample-train", "sample-val", "sample-test"}
    for split in ("train", "val", "test"):
        sha256 = sha256_file(tracked.cfg.paths.prepared / f"{split}.parquet")
        logged = inputs[f"sample-{split}"]
        assert sha256.startswith(logged.dataset.digest)
        assert {t.key: t.value for t in logged.tags}["sha256"] == sha256
        assert str((tracked.cfg.paths.prepared / f"{split}.parquet").resolve()) in logged.dataset.source


def test_the_logged_model_is_code_not_a_pickle(tracked: Tracked, tmp_path: Path) -> None:
    """Models from code: the logged pyfunc holds pyfunc_model.py's source, no pickled instance."""
    import mlflow

    model_id = tracked.client.get_run(tracked.run_id("bag")).data.tags["model_id"]
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{model_id}", dst_path=str(tmp_path)))
    assert not list(local.rglob("*.pkl"))
    assert (local / "pyfunc_model.py").is_file() and "model_code_path" in (local / "MLmodel").read_text()


def test_artifacts_can_be_downloaded(tracked: Tracked, tmp_path: Path) -> None:
    import mlflow

    cfg = tracked.cfg
    local = Path(mlflow.artifacts.download_artifacts(run_id=tracked.run_id("bag"), dst_path=str(tmp_path)))
    assert (local / "tokenizer" / "tokenizer.json").read_bytes() == cfg.paths.tokenizer.read_bytes()
    evaluation = tracked.results["bag"]["evaluate"]
    assert read_json(local / "metrics" / "eval.json")["test_accuracy"] == evaluation["test_accuracy"]
    assert read_json(local / "onnx" / "export.json")["passed"] is True
    assert "by_batch_size" in read_json(local / "data" / "buckets.json")
    assert (local / "metrics" / "train.json").is_file()
    for plot in ("confusion_matrix.png", "learning_curves.png"):
        assert (local / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_resumed_train_logs_into_the_recorded_run(tracked: Tracked, tmp_path: Path, monkeypatch) -> None:
    # epochs=1 is already done: resuming trains nothing, but must reopen (not replace) the run. In a copy:
    # training (resumed or not) clears the variant's export, which later tests read.
    workdir = tmp_path / "ws"
    shutil.copytree(tracked.cfg.paths.models.parent, workdir)
    monkeypatch.chdir(workdir)
    result = steps.train_step(make_config(workdir, "tracking.enabled=true", "train.epochs=1"), "bag", resume=True)
    assert result["mlflow_run_id"] == tracked.run_id("bag")
    assert tracked.client.get_run(tracked.run_id("bag")).info.status == "FINISHED"


# ------------------------------------------------------------------------------------ registry


def champion_version(tracked: Tracked) -> str:
    return tracked.client.get_model_version_by_alias(MODEL_NAME, "champion").version


def test_registry_holds_both_variants_with_their_metrics(tracked: Tracked) -> None:
    client = tracked.client
    for variant in VARIANTS:
        version = client.get_model_version(MODEL_NAME, tracked.version(variant))
        assert version.run_id == tracked.run_id(variant) and version.status == "READY"
        assert version.tags["variant"] == variant and version.tags["onnx_parity_passed"] == "true"
        # Metrics stay numbers on the logged model, linked to the test split it was scored on; no version
        # tag holds a metric as a string.
        accuracy = tracked.results[variant]["evaluate"]["test_accuracy"]
        assert not {"test_accuracy", "test_macro_f1"} & set(version.tags)
        logged = client.get_logged_model(tracked.results[variant]["export"]["mlflow_model_id"])
        by_key = {metric.key: metric for metric in logged.metrics}
        assert by_key["test_accuracy"].value == pytest.approx(accuracy) and "test_macro_f1" in by_key
        test_split = tracked.cfg.paths.prepared_split("test")
        assert by_key["test_accuracy"].dataset_name == f"{tracked.cfg.data.source}-test"
        assert by_key["test_accuracy"].dataset_digest == sha256_file(test_split)[:32]
        assert by_key["test_accuracy"].run_id == tracked.run_id(variant)
        from textrnn.registry import version_metrics

        assert version_metrics(client, version)["test_accuracy"] == pytest.approx(accuracy)


def test_champion_is_the_better_variant(tracked: Tracked) -> None:
    decision = tracked.first_promotion
    assert decision["promoted"] and decision["champion_before"] is None
    assert decision["version"] == tracked.version(tracked.better) == decision["champion_after"]
    assert champion_version(tracked) == tracked.version(tracked.better)
    champion = tracked.client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert champion.tags["promotion_decision"].startswith("promoted")
    assert read_json(tracked.cfg.paths.metrics / "promotion.json")["version"] == decision["version"]


def test_promoting_a_worse_model_leaves_the_alias_alone(tracked: Tracked) -> None:
    decision = steps.promote_step(tracked.cfg, [tracked.version(tracked.worse)])
    assert not decision["promoted"] and "does not beat" in decision["reason"]
    assert champion_version(tracked) == tracked.version(tracked.better)
    worse = tracked.client.get_model_version(MODEL_NAME, tracked.version(tracked.worse))
    assert worse.tags["promotion_decision"].startswith("rejected")


def test_registering_again_reuses_the_version(tracked: Tracked) -> None:
    again = steps.register_step(tracked.cfg, tracked.worse)
    assert again["version"] == tracked.version(tracked.worse)


def test_a_version_whose_parity_failed_is_never_promoted(tracked: Tracked) -> None:
    import mlflow

    worse = tracked.results[tracked.worse]
    broken = mlflow.register_model(
        f"models:/{worse['export']['mlflow_model_id']}", MODEL_NAME,
        tags={"variant": tracked.worse, "test_accuracy": "0.999", "onnx_parity_passed": "false"},
    )
    try:
        decision = steps.promote_step(tracked.cfg, [broken.version])
        assert not decision["promoted"] and "parity" in decision["reason"]
        assert not steps.promote_step(tracked.cfg)["promoted"]  # newest per variant: the broken one and the champion
        assert champion_version(tracked) == tracked.version(tracked.better)
    finally:
        tracked.client.delete_model_version(MODEL_NAME, broken.version)


def test_failed_parity_is_logged_and_blocks_registration(tracked: Tracked, tmp_path: Path, monkeypatch) -> None:
    from textrnn import export, tracking

    workdir = tmp_path / "ws"
    shutil.copytree(tracked.cfg.paths.models.parent, workdir)
    monkeypatch.chdir(workdir)
    (workdir / "models" / "bag" / "mlflow_run.json").unlink()  # a fresh run: leave the fixture's alone
    cfg = make_config(workdir, "tracking.enabled=true", "train.epochs=1")
    checked = export.parity_check
    failing = lambda *a, **k: {**checked(*a, **k), "max_abs_diff": 0.5, "passed": False}  # noqa: E731
    monkeypatch.setattr(export, "parity_check", failing)
    with pytest.raises(export.ExportError, match="parity failed"):
        steps.export_step(cfg, "bag")
    run = tracked.client.get_run(read_json(workdir / "models" / "bag" / "mlflow_run.json")["run_id"])
    assert run.info.status == "FAILED" and run.data.tags["onnx_parity_passed"] == "false"
    assert run.data.metrics["onnx_parity_max_abs_diff"] == 0.5 and "model_id" not in run.data.tags
    with pytest.raises(tracking.TrackingError, match="no logged model"):
        steps.register_step(cfg, "bag")


def test_a_step_that_cannot_start_leaves_no_run(tracked: Tracked) -> None:
    from textrnn.errors import TextrnnError

    with pytest.raises(TextrnnError, match="textrnn train"):
        steps.export_step(tracked.cfg, "lstm")  # never trained in this workspace
    assert not (tracked.cfg.paths.model_dir("lstm") / "mlflow_run.json").exists()
    assert not tracked.client.search_runs(
        [tracked.client.get_experiment_by_name(tracked.cfg.tracking.experiment).experiment_id],
        filter_string="tags.variant = 'lstm'",
    )


# ------------------------------------------------------------------------------- model serving


def onnx_reference(tracked: Tracked):
    from textrnn.inference import OnnxClassifier

    return OnnxClassifier.from_model_dir(tracked.cfg.paths.model_dir(tracked.better), device="cpu").predict(TEXTS)


def test_champion_pyfunc_predicts_exactly_what_onnx_classifier_does(tracked: Tracked) -> None:
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion", model_config={"inference_device": "cpu"})
    labels, probabilities = onnx_reference(tracked)
    from_mapping = model.predict({"text": TEXTS})  # the signature names its one column, `text`
    from_frame = model.predict(pd.DataFrame({"text": TEXTS}))
    pd.testing.assert_frame_equal(from_mapping, from_frame)
    assert from_mapping["label"].tolist() == labels
    classes = tracked.cfg.data.classes
    assert list(from_mapping.columns) == ["label", *(f"prob_{name}" for name in classes)]
    np.testing.assert_array_equal(from_mapping[[f"prob_{name}" for name in classes]].to_numpy(), probabilities)
    assert model.metadata.get_input_schema() is not None and model.metadata.get_output_schema() is not None


def test_pyfunc_loads_without_textrnn_installed(tracked: Tracked, tmp_path: Path) -> None:
    """The model carries textrnn's code: with the installed package hidden, it still loads and predicts."""
    from textrnn import tracking

    model_dir = tracking.download_model(f"models:/{MODEL_NAME}@champion", tmp_path / "model").parent
    script = textwrap.dedent(
        f"""
        import json, sys
        # Hide the installed textrnn: a src/ entry on sys.path, or the editable install's import finder.
        sys.path = [p for p in sys.path if not p.rstrip("/").endswith("/src")]
        sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
        try:
            import textrnn
            raise SystemExit("textrnn is still importable: the test hides nothing")
        except ImportError:
            pass
        import mlflow.pyfunc
        model = mlflow.pyfunc.load_model({str(model_dir)!r}, model_config={{"inference_device": "cpu"}})
        import textrnn
        print(json.dumps({{"file": textrnn.__file__, "labels": model.predict({{"text": {TEXTS!r}}})["label"].tolist()}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["file"].startswith(str(model_dir)), answer["file"]
    assert answer["labels"] == onnx_reference(tracked)[0]


def test_mlflow_models_serve_answers_invocations(tracked: Tracked, tmp_path: Path) -> None:
    server = start_model_server(f"models:/{MODEL_NAME}@champion", tracked.server.url, tmp_path)
    try:
        labels = onnx_reference(tracked)[0]
        frame = {"dataframe_split": {"columns": ["text"], "data": [[text] for text in TEXTS]}}
        for payload in ({"inputs": TEXTS}, frame):
            request = urllib.request.Request(
                f"{server.url}/invocations", data=json.dumps(payload).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=30) as answer:
                predictions = json.loads(answer.read())["predictions"]
            assert [p["label"] for p in predictions] == labels, server.log_tail()
    finally:
        server.stop()
    assert server.process.poll() is not None


def test_ui_is_served_and_search_api_returns_comparable_runs(tracked: Tracked) -> None:
    with urllib.request.urlopen(f"{tracked.server.url}/", timeout=10) as answer:
        assert answer.status == 200 and b"<!doctype html>" in answer.read().lower()
    experiment = tracked.client.get_experiment_by_name(tracked.cfg.tracking.experiment)
    body = {"experiment_ids": [experiment.experiment_id],
            "filter": f"tags.mlflow.parentRunId = '{tracked.parent_run_id}'", "max_results": 10}
    request = urllib.request.Request(
        f"{tracked.server.url}/api/2.0/mlflow/runs/search", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        runs = json.loads(answer.read())["runs"]
    by_variant = {tag["value"]: run for run in runs for tag in run["data"]["tags"] if tag["key"] == "variant"}
    assert set(by_variant) == set(VARIANTS)
    keys = [ours(m["key"] for m in run["data"]["metrics"]) for run in by_variant.values()]
    assert keys[0] == keys[1] and set(FINAL_METRICS) <= keys[0]


# ----------------------------------------------------------------------------------------- CLI


def test_cli_register_promote_and_predict_from_the_registry(tracked: Tracked) -> None:
    workdir = tracked.cfg.paths.models.parent
    on = ("tracking.enabled=true", "train.epochs=1")
    registered = cli(workdir, "register", "--variant", tracked.better, overrides=on)
    assert registered.exit_code == 0, registered.output
    assert f"version {tracked.version(tracked.better)}" in registered.output, registered.output
    promoted = cli(workdir, "promote", overrides=on)
    assert promoted.exit_code == 0 and "not promoted" in promoted.output, promoted.output
    predicted = cli(workdir, "predict", "--model", f"models:/{MODEL_NAME}@champion", "--device", "cpu", TEXTS[0])
    assert predicted.exit_code == 0, predicted.output
    assert onnx_reference(tracked)[0][0] in predicted.output


# ---------------------------------------------------------------------------------- DVC parent


def test_dvc_experiment_stages_share_one_parent_run(tracked: Tracked, monkeypatch) -> None:
    from textrnn import tracking

    monkeypatch.setenv("DVC_EXP_NAME", "brisk-okra")
    monkeypatch.delenv("TEXTRNN_MLFLOW_PARENT_RUN_ID", raising=False)
    experiment_id = tracking.connect(tracked.cfg)
    first = tracking.resolve_parent(tracked.cfg, experiment_id, None)
    assert tracking.resolve_parent(tracked.cfg, experiment_id, None) == first
    parent = tracked.client.get_run(first)
    assert parent.info.run_name == "dvc brisk-okra" and parent.data.tags["dvc_exp_name"] == "brisk-okra"
    assert tracking.resolve_parent(tracked.cfg, experiment_id, "explicit") == "explicit"


# --------------------------------------------------------------------------- without a server


def test_local_default_store_is_sqlite_with_four_slashes(tmp_path: Path, monkeypatch) -> None:
    from mlflow import MlflowClient

    from textrnn import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = tracking.tracking_uri()
    assert uri == f"sqlite:////{str(tmp_path.resolve()).lstrip('/')}/mlflow.db"
    experiment_id = tracking.connect(make_config(tmp_path, "tracking.enabled=true"))
    assert (tmp_path / "mlflow.db").is_file()
    experiment = MlflowClient(uri).get_experiment(experiment_id)
    assert experiment.artifact_location == (tmp_path.resolve() / "mlartifacts").as_uri()


def test_tracking_off_runs_the_pipeline_without_mlflow(workspace: Path, tmp_path: Path, monkeypatch) -> None:
    # Any import of mlflow or of the tracking module now fails, and a server URI that answers nothing
    # would fail any call: the steps must not need either.
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "textrnn.tracking", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.chdir(tmp_path)
    cfg = make_config(workspace, "tracking.enabled=false", "train.epochs=1")
    assert "mlflow_run_id" not in steps.train_step(cfg, "bag")
    steps.export_step(cfg, "bag")
    assert steps.evaluate_step(cfg, "bag", device="cpu")["test_accuracy"] > 0
    assert steps.register_step(cfg, "bag")["registered"] is False
    assert steps.promote_step(cfg)["promoted"] is False
    with steps.pipeline_run(cfg) as parent:
        assert parent is None
    for output in ("models/bag/model.onnx", "metrics/bag/eval.json", "plots/bag/confusion_matrix.png"):
        assert (workspace / output).is_file(), output
    for place in (tmp_path, workspace):
        assert not [p for p in ("mlflow.db", "mlruns", "mlartifacts") if (place / p).exists()], place
    # The run record stays (a DVC output) but names no run.
    assert json.loads((workspace / "models" / "bag" / "mlflow_run.json").read_text())["run_id"] is None


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "192.0.2.1:5000"])  # closed port; TEST-NET, no route
def test_unreachable_server_fails_fast_with_one_line(workspace: Path, monkeypatch, host: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://{host.format(port=free_port())}")
    started = time.monotonic()
    result = cli(workspace, "train", "--variant", "bag", "--no-progress", overrides=("tracking.enabled=true",))
    elapsed = time.monotonic() - started
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: MLflow tracking server") and "unreachable" in lines[0]
    assert elapsed < 15, elapsed
    assert not (workspace / "models" / "bag" / "model.pt").exists()


# ------------------------------------------------------------------------------ promotion rules


def candidate(version: str, accuracy: float | None, parity: bool = True, variant: str = "gru") -> dict:
    return {"version": version, "variant": variant, "test_accuracy": accuracy, "onnx_parity_passed": parity}


def test_promotion_rules() -> None:
    from textrnn.promotion import decide_promotion

    first = decide_promotion([candidate("1", 0.5), candidate("2", 0.7)], None, 0.0)
    assert first["promoted"] and first["version"] == "2"
    champion = candidate("2", 0.7)
    assert decide_promotion([candidate("3", 0.75)], champion, 0.01)["promoted"]
    below = decide_promotion([candidate("3", 0.705)], champion, 0.01)
    assert not below["promoted"] and "min_delta 0.01" in below["reason"]
    assert not decide_promotion([candidate("3", 0.7)], champion, 0.0)["promoted"]  # a tie is not better
    broken = decide_promotion([candidate("3", 0.99, parity=False)], champion, 0.0)
    assert not broken["promoted"] and "parity" in broken["reason"] and broken["rejected"][0]["version"] == "3"
    mixed = decide_promotion([candidate("3", 0.99, parity=False), candidate("4", 0.8)], champion, 0.0)
    assert mixed["promoted"] and mixed["version"] == "4"
    assert not decide_promotion([candidate("3", None)], champion, 0.0)["promoted"]
    assert not decide_promotion([champion], champion, 0.0)["promoted"]
