"""textrnn.pipeline: the order of the steps, and rows that come back through MLflow, not through memory or disk."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from conftest import PARAMS, path_overrides
from textrnn import config, pipeline, provenance, results
from textrnn.config import Config

SMALL = ["data.source=sample", "data.sample.train_rows=300", "data.sample.test_rows=60", "train.epochs=2", "train.patience=3",
         "train.threads=1"]


class Recorder(pipeline.InProcess):
    """The in-process steps, each call recorded as `step` or `step:variant` (and the device slot's span)."""

    def __init__(self, fail: str | None = None) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.fail = fail

    def _record(self, step: str, variant: str | None = None) -> None:
        self.calls.append(f"{step}:{variant}" if variant else step)
        if variant is not None and f"{step}:{variant}" == self.fail:
            raise RuntimeError(f"{step} of {variant} broke")

    def prepare(self, cfg: Config) -> Any:
        self._record("prepare")
        return super().prepare(cfg)

    def encode(self, cfg: Config) -> Any:
        self._record("encode")
        return super().encode(cfg)

    def train(self, cfg: Config, variant: str, parent_run_id: str | None):
        self._record("train", variant)
        return super().train(cfg, variant, parent_run_id)

    def export(self, cfg: Config, variant: str) -> Any:
        self._record("export", variant)
        return super().export(cfg, variant)

    def evaluate(self, cfg: Config, variant: str) -> Any:
        self._record("evaluate", variant)
        return super().evaluate(cfg, variant)

    def register(self, cfg: Config, variant: str) -> dict[str, Any]:
        self._record("register", variant)
        return super().register(cfg, variant)

    def promote(self, cfg: Config, versions: Sequence[str] | None) -> dict[str, Any]:
        self._record("promote")
        return super().promote(cfg, versions)

    @contextlib.contextmanager
    def device_slot(self) -> Iterator[None]:
        self.calls.append("slot")
        yield
        self.calls.append("/slot")


@pytest.fixture
def tracked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("TEXTRNN_MLFLOW_PARENT_RUN_ID", raising=False)
    # Random batches: their padding differs from epoch to epoch, so a row must average the epochs as
    # train.json does (the last epoch alone would differ).
    return config.load(PARAMS, [*SMALL, "buckets.enabled=false", "tracking.enabled=true", *path_overrides(tmp_path)])


def test_the_steps_run_in_the_documented_order(tracked: Config) -> None:
    how = Recorder()
    result = pipeline.run(tracked, ["bag", "gru"], how, pipeline.one_after_another(how))
    per_variant = ["prepare", "encode", "slot", "train:{v}", "export:{v}", "evaluate:{v}", "/slot", "register:{v}"]
    expected = ["prepare", "encode", *[step.format(v="bag") for step in per_variant],
                *[step.format(v="gru") for step in per_variant], "promote"]
    assert how.calls == expected
    assert [row["variant"] for row in result["variants"]] == ["bag", "gru"]
    assert result["promotion"]["promoted"] is True


def test_rows_come_from_mlflow_alone(tracked: Config) -> None:
    """Tracked, the rows are read from the parent run's result tags and the variant runs: with every
    local report file gone, the same rows come back."""
    result = pipeline.run_in_process(tracked, ["bag"])
    from mlflow.tracking import MlflowClient

    parent = MlflowClient().get_run(result["mlflow_parent_run_id"])
    assert results.RESULT_TAG_PREFIX + "bag" in parent.data.tags
    row = result["variants"][0]
    variant_run = MlflowClient().get_run(row["mlflow_run_id"])
    assert row["test_accuracy"] == variant_run.data.metrics["test_accuracy"]
    trained = json.loads(tracked.paths.train_report("bag").read_text(encoding="utf-8"))
    assert row["padding_efficiency"] == pytest.approx(trained["padding_efficiency"])  # as the untracked row has it
    assert row["model_version"] is not None
    assert parent.data.tags["config_sha256"] == provenance.config_sha256(tracked)  # the config handed down
    assert parent.data.metrics["test_accuracy/bag"] == parent.data.metrics["best_test_accuracy"] == row["test_accuracy"]
    # Its description links the variant's run (which a cached variant keeps from an earlier pipeline).
    link = f"(#/experiments/{parent.info.experiment_id}/runs/{row['mlflow_run_id']})"
    assert link in parent.data.tags[results.NOTE_TAG] and "| bag |" in parent.data.tags[results.NOTE_TAG]
    for run in (parent, variant_run):  # which code, on every run
        assert run.data.tags["git_commit"] == provenance.git_tags()["git_commit"] != "unknown"

    shutil.rmtree(tracked.paths.metrics)
    shutil.rmtree(tracked.paths.models)
    again = results.collect(tracked, {}, ["bag"], result["mlflow_parent_run_id"])
    assert again == result["variants"]


def test_a_failed_variant_fails_the_pipeline_after_the_others_and_promotes_nothing(tracked: Config) -> None:
    how = Recorder(fail="export:bag")
    published = []
    with pytest.raises(pipeline.PipelineError, match=r"1 of 2 variants failed: bag: export of bag broke"):
        pipeline.run(tracked, ["bag", "gru"], how, pipeline.one_after_another(how),
                     publish=lambda rows, promotion, failures: published.append((rows, promotion, failures)))
    assert "register:gru" in how.calls, "the other variant still ran"
    assert "promote" not in how.calls
    (rows, promotion, failures), = published
    assert [row["variant"] for row in rows] == ["gru"]
    assert promotion["promoted"] is False and failures == ["bag: export of bag broke"]
    from mlflow.tracking import MlflowClient

    parents = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name(tracked.tracking.experiment).experiment_id],
        filter_string="tags.run_kind = 'pipeline'")
    assert [run.info.status for run in parents] == ["FAILED"]


def test_untracked_rows_come_from_the_report_files(tmp_path: Path) -> None:
    cfg = config.load(PARAMS, [*SMALL, "tracking.enabled=false", *path_overrides(tmp_path)])
    result = pipeline.run_in_process(cfg, ["bag"])
    (row,) = result["variants"]
    assert row["mlflow_run_id"] is None and 0.0 <= row["test_accuracy"] <= 1.0
    assert row["epochs_run"] == 2
    assert result["promotion"]["promoted"] is False
