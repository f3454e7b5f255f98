"""The Prefect wiring: cache keys, tasks alone (`.fn()`), and the flows on the sample corpus.

Flow runs go to a temporary Prefect server (`prefect_test_harness`), one per module. The cached-pipeline
scenario shares one workspace whose data come from CSV files (so a test can corrupt one): a fresh run,
an unchanged rerun (every step cached), a changed `gru` (only gru reruns), a corrupt CSV (the flow fails
with the step's own error) and the fixed CSV (everything resumes from the cache).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from config_access import covering, recording
from conftest import PARAMS, REPO_ROOT, make_config, path_overrides
from flows import caching, tasks
from flows.report import comparison_markdown
from flows.training import PipelineError, override_list, training_pipeline
from textrnn import config, sample, steps
from textrnn.config import Config
from textrnn.data import DataError

VARIANTS = ["bag", "gru"]
STEPS = ("train", "export", "evaluate")


# ------------------------------------------------------------------------------------ cache keys


def _keys(cfg: Config, variant: str = "gru") -> dict[str, str]:
    return {
        "encode": caching.step_files(cfg, "encode").key("encode"),
        "train": caching.step_files(cfg, "train", variant).key("train"),
        "other_train": caching.step_files(cfg, "train", "bag").key("train"),
        "export": caching.step_files(cfg, "export", variant).key("export"),
    }


def test_train_key_follows_the_variant_config_and_the_encoded_data(workspace: Path) -> None:
    base = _keys(make_config(workspace))
    assert base == _keys(make_config(workspace)), "the same inputs give the same keys"

    wider = _keys(make_config(workspace, "variants.gru.hidden=48"))
    assert wider["train"] != base["train"]
    assert wider["other_train"] == base["other_train"], "another variant's key does not move"
    assert wider["encode"] == base["encode"], "encode does not read hidden sizes"

    assert _keys(make_config(workspace, "train.learning_rate=0.01"))["train"] != base["train"]
    assert _keys(make_config(workspace, "registry.min_delta=0.5")) == base, "registry settings are not read"

    (workspace / "data/encoded/train.npz").write_bytes(b"other bytes")
    assert _keys(make_config(workspace))["train"] != base["train"]


def test_encode_key_ignores_variants_and_export_key_follows_the_model(workspace: Path) -> None:
    cfg = make_config(workspace)
    assert _keys(make_config(workspace, "variants.gru.batch_size=32"))["encode"] == _keys(cfg)["encode"]
    assert _keys(make_config(workspace, "tokenizer.max_len=64"))["encode"] != _keys(cfg)["encode"]
    before = caching.step_files(cfg, "export", "gru").key("export")
    model = cfg.paths.model_dir("gru") / "model.pt"
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_bytes(b"a model")
    assert caching.step_files(cfg, "export", "gru").key("export") != before


def test_outputs_count_only_while_unchanged_since_their_key_wrote_them(workspace: Path) -> None:
    cfg = make_config(workspace)
    files = caching.step_files(cfg, "encode")
    key = files.key("encode")
    stamp = caching.stamp_file(cfg, "encode")
    assert not caching.outputs_from(stamp, key, files), "never stamped"
    caching.record_outputs(stamp, key, files)
    assert caching.outputs_from(stamp, key, files)
    assert not caching.outputs_from(stamp, "encode-another-key", files), "produced by another config"
    (workspace / "data/encoded/buckets.json").write_text("{}")
    assert not caching.outputs_from(stamp, key, files), "overwritten since"
    caching.record_outputs(stamp, key, files)
    (workspace / "data/encoded/buckets.json").unlink()
    assert not caching.outputs_from(stamp, key, files), "deleted since"


def _covered(key: str, declared: list[str]) -> bool:
    """Whether a read `key` is inside a declared one."""
    return covering(key, declared) is not None


def test_every_step_key_covers_the_config_the_step_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run each step (tracked: it reads the most) on a recording Config; every key it reads must be among the
    params its DVC stage declares (`caching.stage_params`), so that changing any of them changes the step's
    Prefect cache key as it reruns the DVC stage."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("TEXTRNN_MLFLOW_PARENT_RUN_ID", raising=False)
    cfg = config.load(PARAMS, ["data.source=sample", "data.sample.train_rows=300", "data.sample.test_rows=60",
                               "train.epochs=1", "train.threads=1", "tracking.enabled=true", *path_overrides(tmp_path)])
    variant = "bag"
    calls = {
        "prepare": lambda c: steps.prepare_step(c),
        "encode": lambda c: steps.encode_step(c),
        "train": lambda c: steps.train_step(c, variant),
        "export": lambda c: steps.export_step(c, variant),
        "evaluate": lambda c: steps.evaluate_step(c, variant),
    }
    assert set(calls) == set(caching.CACHED_STEPS)
    undeclared = []
    for step, call in calls.items():
        proxy, keys = recording(cfg)
        call(proxy)
        declared = list(caching.stage_params(step, variant))
        undeclared += [f"{step} reads '{key}'" for key in sorted(keys) if not _covered(key, declared)]
    assert not undeclared, "keys missing from dvc.yaml's params:\n" + "\n".join(undeclared)


def test_override_list_accepts_a_mapping_or_a_list() -> None:
    assert override_list(None) == []
    assert override_list(["train.epochs=1"]) == ["train.epochs=1"]
    assert override_list({"train.epochs": 1, "data.source": "sample", "data.text_fields": ["text"]}) == [
        "train.epochs=1", 'data.source="sample"', 'data.text_fields=["text"]'
    ]


# ------------------------------------------------------------------------------ tasks, by .fn()


def test_step_tasks_call_the_steps(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, "data.sample.train_rows=200", "data.sample.test_rows=40")
    report = tasks.prepare.fn(cfg)
    assert sum(report["rows"].values()) == 240
    assert tasks.encode.fn(cfg)["vocab_size"] > 2
    assert tasks.register.fn(cfg, "gru") == {"variant": "gru", "registered": False,
                                             "reason": "tracking.enabled is false"}
    assert tasks.promote.fn(cfg)["promoted"] is False


def test_prepare_retries_only_when_it_downloads(tmp_path: Path) -> None:
    assert tasks.prepare_options(make_config(tmp_path)) == {}
    assert tasks.prepare_options(make_config(tmp_path, "data.source=hf"))["retries"] == 3
    assert tasks.register.retries == 3 and tasks.promote.retries == 3


def test_comparison_markdown_marks_the_champion_and_lists_failures() -> None:
    rows = [
        {"variant": "bag", "test_accuracy": 0.5, "test_macro_f1": 0.4, "inference_latency_ms_b1": 0.2,
         "padding_efficiency": 0.97, "mlflow_run_id": "a" * 32, "mlflow_run_url": "http://mlflow/#/runs/a",
         "model_version": "1", "worker": "gpu-a", "train_cached": True},
        {"variant": "gru", "test_accuracy": 0.9, "test_macro_f1": 0.89, "inference_latency_ms_b1": 0.5,
         "padding_efficiency": 0.97, "mlflow_run_id": None, "model_version": "2", "worker": "gpu-b",
         "train_cached": False},
    ]
    markdown = comparison_markdown(rows, {"promoted": True, "reason": "v2 wins", "champion_after": "2"},
                                   ["lstm: boom"])
    lines = markdown.splitlines()
    gru, bag = (next(i for i, line in enumerate(lines) if line.startswith(f"| {v} |")) for v in ("gru", "bag"))
    assert gru < bag, "best test accuracy first"
    assert "**champion**" in lines[gru] and "**champion**" not in lines[bag]
    assert "[aaaaaaaa](http://mlflow/#/runs/a)" in lines[bag] and "| cached |" in lines[bag]
    assert "promoted: v2 wins" in markdown and "- lstm: boom" in markdown


# ------------------------------------------------------------------------------- flows, harness


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    # A busy machine can take a while to migrate the temporary server's database.
    with prefect_test_harness(server_startup_timeout=180):
        yield


def task_states(flow_run_id: Any) -> dict[str, str]:
    """{'<flow>/<task run>': state name} for a flow run (`pipeline/...`) and its subflow runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        labels = {flow_run_id: "pipeline", **{child.id: child.name for child in children}}
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(labels))))
    return {f"{labels[run.flow_run_id]}/{run.name}": run.state.name for run in task_runs}


def step_states(states: dict[str, str], variant: str) -> dict[str, str]:
    return {step: states[f"train-{variant}/{step}-{variant}"] for step in STEPS}


def data_states(states: dict[str, str]) -> set[str]:
    """States of every prepare and encode run (the pipeline's and each variant flow's)."""
    return {state for name, state in states.items() if name.endswith(("/prepare", "/encode"))}


def write_sample_csvs(directory: Path, cfg: Config) -> tuple[Path, Path]:
    """The sample corpus as headed CSV files (`text,label`), the csv source's input."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, frame in zip(("train", "test"), sample.generate_splits(cfg.data, cfg.seed)):
        path = directory / f"{name}.csv"
        frame.to_csv(path, index=False, quoting=csv.QUOTE_ALL)
        paths.append(path)
    return paths[0], paths[1]


@dataclass
class Run:
    result: dict[str, Any]
    states: dict[str, str]


@dataclass
class Scenario:
    workdir: Path
    overrides: list[str]
    train_csv: Path
    runs: dict[str, Run]

    def run(self, *extra: str) -> Run:
        with contextlib.chdir(self.workdir):  # a pipeline writes only inside its working directory
            state = training_pipeline(params=str(PARAMS), variants=VARIANTS, overrides=[*self.overrides, *extra],
                                      return_state=True)
        return Run(result=state.result(), states=task_states(state.state_details.flow_run_id))


@pytest.fixture(scope="module")
def scenario(harness: None, tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """One workspace run three times: fresh, unchanged, and with gru's hidden size changed."""
    workdir = tmp_path_factory.mktemp("flow-ws")
    sizes = ["data.sample.train_rows=1000", "data.sample.test_rows=200"]
    train_csv, test_csv = write_sample_csvs(workdir / "input", make_config(workdir, *sizes))
    overrides = [
        "data.source=csv", f"data.train_path={train_csv}", f"data.test_path={test_csv}", "data.text_fields=[text]",
        "train.epochs=1", "train.threads=1", "tracking.enabled=false", "orchestration.max_concurrency=2",
        *path_overrides(workdir),
    ]
    scenario = Scenario(workdir=workdir, overrides=overrides, train_csv=train_csv, runs={})
    scenario.runs["fresh"] = scenario.run()
    scenario.runs["unchanged"] = scenario.run()
    scenario.runs["gru changed"] = scenario.run("variants.gru.hidden=24")
    return scenario


def test_a_fresh_run_trains_every_variant(scenario: Scenario) -> None:
    run = scenario.runs["fresh"]
    rows = {row["variant"]: row for row in run.result["variants"]}
    assert sorted(rows) == VARIANTS
    for variant, row in rows.items():
        assert 0.0 <= row["test_accuracy"] <= 1.0 and 0.0 < row["padding_efficiency"] <= 1.0
        assert row["inference_latency_ms_b1"] > 0 and row["train_cached"] is False
        assert (scenario.workdir / "models" / variant / "model.onnx").is_file()
        assert step_states(run.states, variant) == dict.fromkeys(STEPS, "Completed")
    assert run.states["pipeline/prepare"] == run.states["pipeline/encode"] == "Completed"
    assert run.result["promotion"] == {"promoted": False, "reason": "tracking.enabled is false"}
    pids = {row["pid"] for row in rows.values()}
    assert len(pids) == len(VARIANTS) and os.getpid() not in pids, "each variant runs in a process of its own"


def test_an_unchanged_rerun_is_served_from_the_cache(scenario: Scenario) -> None:
    run = scenario.runs["unchanged"]
    assert data_states(run.states) == {"Cached"}
    for variant in VARIANTS:
        assert step_states(run.states, variant) == dict.fromkeys(STEPS, "Cached")
        # Registration asks the registry every time (idempotent); here tracking is off.
        assert run.states[f"train-{variant}/register-{variant}"] == "Completed"
    assert all(row["train_cached"] for row in run.result["variants"])
    fresh = {row["variant"]: row["test_accuracy"] for row in scenario.runs["fresh"].result["variants"]}
    assert {row["variant"]: row["test_accuracy"] for row in run.result["variants"]} == fresh


def test_changing_one_variant_reruns_only_that_variant(scenario: Scenario) -> None:
    run = scenario.runs["gru changed"]
    assert data_states(run.states) == {"Cached"}
    assert step_states(run.states, "gru") == dict.fromkeys(STEPS, "Completed")
    assert step_states(run.states, "bag") == dict.fromkeys(STEPS, "Cached")


def test_a_corrupt_input_fails_the_flow_and_the_fixed_input_resumes_from_the_cache(scenario: Scenario) -> None:
    good = scenario.train_csv.read_bytes()
    lines = good.decode().splitlines()
    # Every tenth label becomes a class that does not exist: far above data.max_bad_fraction.
    corrupt = [line if i == 0 or i % 10 else line.rsplit(",", 1)[0] + ',"Weather"' for i, line in enumerate(lines)]
    scenario.train_csv.write_text("\n".join(corrupt) + "\n")
    try:
        with (pytest.raises(DataError, match=r"train\.csv: \d+ of \d+ rows are bad .*label not in data\.classes"),
              contextlib.chdir(scenario.workdir)):
            training_pipeline(params=str(PARAMS), variants=VARIANTS,
                              overrides=[*scenario.overrides, "variants.gru.hidden=24"])
    finally:
        scenario.train_csv.write_bytes(good)
    resumed = scenario.run("variants.gru.hidden=24")
    assert data_states(resumed.states) == {"Cached"}
    for variant in VARIANTS:
        assert step_states(resumed.states, variant) == dict.fromkeys(STEPS, "Cached")


def test_switching_back_to_an_overwritten_config_retrains(scenario: Scenario, harness: None) -> None:
    """gru's files now hold the hidden=24 model: the original config's cache record must not be trusted."""
    run = scenario.run()
    assert step_states(run.states, "gru")["train"] == "Completed"
    assert step_states(run.states, "bag") == dict.fromkeys(STEPS, "Cached")


def test_batch_predict_scores_a_file_with_a_trained_model(scenario: Scenario, tmp_path: Path) -> None:
    from flows.batch import batch_predict

    texts = tmp_path / "texts.csv"
    texts.write_text('text\n"the home side beat the champions"\n"stocks fell as rates rose"\n')
    output = tmp_path / "predictions.jsonl"
    with contextlib.chdir(scenario.workdir):  # the scenario's config names outputs inside its workdir
        result = batch_predict(input=str(texts), output=str(output), model=str(scenario.workdir / "models" / "bag"),
                               params=str(PARAMS), overrides=scenario.overrides)
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert result["texts"] == len(records) == 2
    assert all(record["label"] in record["probabilities"] for record in records)


def test_pipeline_command_prints_the_comparison(scenario: Scenario) -> None:
    from textrnn.cli import app

    sets = [arg for override in scenario.overrides for arg in ("--set", override)]
    with contextlib.chdir(scenario.workdir):
        answer = CliRunner().invoke(app, ["pipeline", "--variants", "bag", "--params", str(PARAMS), *sets])
    assert answer.exit_code == 0, answer.output
    assert "bag" in answer.output and "cached" in answer.output
    assert "not promoted: tracking.enabled is false" in answer.output
    assert "ms b1: ONNX Runtime latency" in " ".join(answer.output.split()), "the headings are spelled out"
    assert "Prefect: " in answer.output and "MLflow: " not in answer.output  # untracked: no MLflow run to show


# --------------------------------------------------------------------------- guards, tracking


def test_distributed_mode_needs_tracking_and_the_deployment(harness: None, tmp_path: Path) -> None:
    base = [*path_overrides(tmp_path), "orchestration.mode=distributed"]
    with pytest.raises(PipelineError, match="moves models through MLflow"):
        training_pipeline(params=str(PARAMS), overrides=[*base, "tracking.enabled=false"])
    with pytest.raises(PipelineError, match="deployment 'train-variant/train-variant' not found"):
        training_pipeline(params=str(PARAMS), overrides=[*base, "tracking.enabled=true"])


def test_pipeline_command_fails_in_one_line_when_the_prefect_api_is_down(tmp_path: Path) -> None:
    from mlflow_server import free_port
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from textrnn.cli import app

    # Tiny settings, so that a missed check could not start a long run.
    sets = [arg for override in ["data.source=sample", "train.epochs=1", "tracking.enabled=false",
                                 *path_overrides(tmp_path)] for arg in ("--set", override)]
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        answer = CliRunner().invoke(app, ["pipeline", "--variants", "bag", "--params", str(PARAMS), *sets])
    assert answer.exit_code == 2, answer.output
    assert "is unreachable" in answer.output and "unset PREFECT_API_URL" in answer.output


def test_parent_run_name_carries_the_date_and_the_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import time

    from flows.training import parent_run_name

    monkeypatch.chdir(REPO_ROOT)  # the commit is read from the checkout the pipeline runs in
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT).stdout.strip()
    name = parent_run_name()
    assert name.startswith(f"pipeline {time.strftime('%Y-%m-%d', time.gmtime())}") and name.endswith(commit[:8])


def test_tracked_pipeline_nests_variant_runs_and_promotes_a_champion(
    harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the default local store (./mlflow.db, ./mlartifacts) of a working directory under tmp."""
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    overrides = ["data.source=sample", "data.sample.train_rows=600", "data.sample.test_rows=120", "train.epochs=1",
                 "train.threads=1", "tracking.enabled=true", *path_overrides(tmp_path / "ws")]
    result = training_pipeline(params=str(PARAMS), variants=["bag"], overrides=overrides)

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (row,) = result["variants"]
    variant_run = client.get_run(row["mlflow_run_id"])
    parent = client.get_run(result["mlflow_parent_run_id"])
    assert variant_run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.info.run_name.startswith("pipeline 20") and parent.info.status == "FINISHED"
    assert result["promotion"]["promoted"] is True
    assert str(client.get_model_version_by_alias("agnews-rnn", "champion").version) == row["model_version"]
    with get_client(sync_client=True) as prefect:
        (artifact,) = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["variant-comparison"])), limit=1,
            sort=ArtifactSort.CREATED_DESC,
        )
    assert "| bag |" in artifact.data and "**champion**" in artifact.data


def test_a_worker_at_another_commit_refuses_unless_allowed() -> None:
    from flows.training import check_commit
    from textrnn.provenance import git_tags

    here = git_tags()["git_commit"]
    check_commit(here, allow_other_commit=False)
    check_commit(None, allow_other_commit=False)  # a variant flow run started by hand
    other = "0" * 40
    with pytest.raises(PipelineError, match=r"is at commit \w+, the pipeline's at 000000000000: check out"):
        check_commit(other, allow_other_commit=False)
    check_commit(other, allow_other_commit=True)
