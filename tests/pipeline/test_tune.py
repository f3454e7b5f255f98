"""Sweeps (`textrnn tune`): two real worker processes share one Optuna study, one is SIGKILLed mid-trial,
the study is resumed and applied, and MLflow holds every trial.

One module-scoped story, on the sample corpus, with the default local stores of a working directory
(Optuna's sqlite under .cache/, MLflow's mlflow.db):

1. the test creates the study and queues three trials in front of the sampler (two that learn, then one
   whose learning rate cannot learn in an epoch), so a pruned trial is certain whatever the two workers'
   timing: the third starts only once a worker has finished a trial, and is worse than it at epoch 1;
2. workers A and B run a 6-trial study; once the queued trials are done, B is SIGKILLed while it trains one;
3. A goes on alone: B's trial fails when its heartbeat is stale, and A runs the trial in its place;
4. a third worker resumes the same study to 8 trials with `--apply`: the best params become a variant in
   params.yaml, trained through the pipeline, registered, and promoted by the gate.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import PARAMS
from textrnn import config
from textrnn.files import read_json

pytestmark = pytest.mark.slow

TEXTRNN = str(Path(sys.executable).parent / "textrnn")
STUDY = "gru-sweep"
OVERRIDES = [
    "data.source=sample", "data.sample.train_rows=3000", "data.sample.test_rows=200",
    "train.epochs=4", "train.threads=1",
    "tune.space={learning_rate: {low: 0.00001, high: 0.02, log: true}, hidden: {low: 8, high: 32}}",
    "tune.prune_after_trials=1", "tune.prune_after_epochs=1", "tune.heartbeat_seconds=1",
]
# Queued before the sampler's own: two that learn, then one that cannot learn in an epoch (pruned).
QUEUED = [{"learning_rate": 0.01, "hidden": 16}, {"learning_rate": 0.005, "hidden": 24},
          {"learning_rate": 0.00001, "hidden": 8}]
DEADLINE_S = 420


def _sets() -> list[str]:
    return [arg for override in OVERRIDES for arg in ("--set", override)]


def _own_stores_env() -> dict[str, str]:
    """This environment without a tracking URI, storage or parent run another test may have left set: every
    process of the story uses the working directory's own stores."""
    return {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_TRACKING", "TEXTRNN_"))}


def _worker(workdir: Path, log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([TEXTRNN, "tune", "--variant", "gru", "--study", STUDY, *extra, *_sets()], cwd=workdir,
                            env=_own_stores_env(), stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _kill_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@dataclass
class Sweep:
    workdir: Path
    cfg: config.Config
    killed_pid: int
    done_before_kill: int
    after_first_phase: dict[str, int]
    apply_output: str

    def study(self):
        from textrnn import tune

        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(self.workdir)
            return tune.open_study(self.cfg, self.cfg.variant("gru"), STUDY)

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(f"sqlite:///{self.workdir / 'mlflow.db'}")

    def trial_runs(self):
        client = self.client()
        experiment = client.get_experiment_by_name(self.cfg.tracking.experiment)
        return client.search_runs([experiment.experiment_id], f"tags.run_kind = 'trial' AND tags.tune_study = '{STUDY}'")


def _states(study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def _holds_a_trial(workdir: Path, pid: int) -> bool:
    """Whether process `pid` is training a trial now: its trial run is RUNNING (read straight from the
    sqlite store: polled many times a second, while trials last a second or two)."""
    with contextlib.closing(sqlite3.connect(workdir / "mlflow.db", timeout=30)) as db:
        return db.execute(
            "SELECT COUNT(*) FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid WHERE runs.status = 'RUNNING' "
            "AND tags.key = 'textrnn.pid' AND tags.value = ? AND runs.name LIKE '% trial %'", (str(pid),)
        ).fetchone()[0] > 0


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    workdir = tmp_path_factory.mktemp("sweep")
    shutil.copy(PARAMS, workdir / "params.yaml")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        cfg = config.load(workdir / "params.yaml", OVERRIDES)
    # The data first, so the workers start training at once (each would otherwise prepare it too).
    for step in ("prepare", "encode"):
        subprocess.run([TEXTRNN, step, *_sets()], cwd=workdir, check=True, capture_output=True, timeout=120,
                       env=_own_stores_env())
    sweep = Sweep(workdir, cfg, 0, 0, {}, "")
    study = sweep.study()
    for params in QUEUED:
        study.enqueue_trial(params)

    first, second = (_worker(workdir, workdir / log, "--trials", "6") for log in ("a.log", "b.log"))
    try:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            queued = study.get_trials()[:len(QUEUED)]
            queued_done = len(queued) == len(QUEUED) and all(trial.state.name in ("COMPLETE", "PRUNED") for trial in queued)
            if queued_done and _holds_a_trial(workdir, second.pid):
                break
            assert second.poll() is None, (workdir / "b.log").read_text()
            time.sleep(0.05)
        else:
            pytest.fail("worker B never held a trial after the queued ones were done")
        counts = _states(study)
        _kill_group(second)
        sweep.killed_pid, sweep.done_before_kill = second.pid, counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)
        assert first.wait(timeout=DEADLINE_S) == 0, (workdir / "a.log").read_text()
        sweep.after_first_phase = _states(study)
        resumed = subprocess.run([TEXTRNN, "tune", "--variant", "gru", "--study", STUDY, "--trials", "8", "--apply",
                                  "--as", "gru_best", *_sets()], cwd=workdir, capture_output=True, text=True,
                                 timeout=DEADLINE_S, env=_own_stores_env())
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        sweep.apply_output = resumed.stdout
    finally:
        _kill_group(first)
        _kill_group(second)
    return sweep


def test_a_worker_killed_mid_trial_costs_one_trial_not_the_study(sweep: Sweep) -> None:
    # A finished the 6-trial study alone: the killed trial failed (heartbeat) and A ran one in its place.
    assert sweep.done_before_kill < 6
    assert sweep.after_first_phase.get("COMPLETE", 0) + sweep.after_first_phase.get("PRUNED", 0) == 6
    assert sweep.after_first_phase.get("FAIL") == 1
    assert "RUNNING" not in sweep.after_first_phase
    # Resumed to 8: the same study, numbering on, nothing lost.
    final = _states(sweep.study())
    assert final.get("COMPLETE", 0) + final.get("PRUNED", 0) == 8
    assert final.get("FAIL") == 1 and "RUNNING" not in final
    assert sorted(trial.number for trial in sweep.study().trials) == list(range(9))


def test_the_trial_that_cannot_learn_is_pruned_and_its_run_ends_killed(sweep: Sweep) -> None:
    study = sweep.study()
    slow = [trial for trial in study.trials if trial.params.get("learning_rate") == QUEUED[2]["learning_rate"]]
    assert [trial.state.name for trial in slow] == ["PRUNED"]
    assert list(slow[0].intermediate_values) == [1]  # stopped after its first epoch
    run = sweep.client().get_run(slow[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["trial_state"] == "PRUNED"
    assert len(sweep.client().get_metric_history(run.info.run_id, "val_loss")) == 1


def test_every_trial_is_a_child_run_of_the_study_and_none_is_left_running(sweep: Sweep) -> None:
    from textrnn.provenance import variant_params

    runs = sweep.trial_runs()
    study = sweep.study()
    assert len(runs) == len(study.trials) == 9
    by_number = {int(run.data.tags["trial_number"]): run for run in runs}
    expected_status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "KILLED"}
    parents = {run.data.tags["mlflow.parentRunId"] for run in runs}
    assert len(parents) == 1
    for trial in study.trials:
        run = by_number[trial.number]
        assert run.info.status == expected_status[trial.state.name], trial.number
        if trial.state.name != "FAIL":  # a worker killed at the wrong moment may not have recorded it
            assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
    killed = [run for run in runs if run.data.tags.get("textrnn.pid") == str(sweep.killed_pid)
              and run.data.tags.get("trial_state") == "FAIL"]
    assert len(killed) == 1 and killed[0].info.status == "KILLED"
    # Comparable with any `textrnn train` run of the variant: the same params and metric keys.
    train_keys = set(variant_params(sweep.cfg, sweep.cfg.variant("gru")))
    for run in runs:
        assert set(run.data.params) == train_keys
    complete = [by_number[trial.number] for trial in study.trials if trial.state.name == "COMPLETE"]
    for run in complete:
        assert {"best_val_loss", "best_val_accuracy", "val_loss", "train_loss", "best_epoch"} <= set(run.data.metrics)
        assert float(run.data.params["variant.hidden"]) == study.trials[int(run.data.tags["trial_number"])].params["hidden"]


def test_the_study_run_records_the_best_trial(sweep: Sweep) -> None:
    study = sweep.study()
    parent = sweep.client().get_run(sweep.trial_runs()[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and parent.data.tags["run_kind"] == "tune"
    assert parent.data.metrics["best_val_loss"] == pytest.approx(study.best_value)
    assert parent.data.metrics["best_trial"] == study.best_trial.number
    assert parent.data.tags["best.hidden"] == str(study.best_params["hidden"])
    assert parent.data.tags["best_run_id"] == study.best_trial.user_attrs["mlflow_run_id"]
    assert parent.data.metrics["trials_pruned"] >= 1


def test_apply_retrains_the_best_params_to_the_best_trials_metric(sweep: Sweep) -> None:
    study = sweep.study()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(sweep.workdir)
        written = config.load(sweep.workdir / "params.yaml", OVERRIDES)
    tuned = written.variant("gru_best").config
    assert tuned.hidden == study.best_params["hidden"]
    assert tuned.learning_rate == study.best_params["learning_rate"]
    assert {name: variant for name, variant in written.variants.items() if name != "gru_best"} == sweep.cfg.variants
    # Trained through the pipeline with the trial's params, seed and data: the same validation loss, bit for bit.
    retrained = read_json(sweep.workdir / "metrics" / "gru_best" / "train.json")
    assert retrained["best_val_loss"] == study.best_value
    assert retrained["best_val_accuracy"] == study.best_trial.user_attrs["val_accuracy"]
    # ... registered, and judged by the same gate as every variant (the first version becomes champion).
    promotion = read_json(sweep.workdir / "metrics" / "promotion.json")
    assert promotion["promoted"] is True and "gru_best" in sweep.apply_output


def test_the_tune_flow_runs_a_study_locally_and_publishes_its_trials(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The Prefect `tune` flow in local mode (one worker subflow) on a temporary Prefect server: the study
    completes, the flow run is named after it and tagged, and the artifact lists every trial."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort
    from prefect.testing.utilities import prefect_test_harness

    from flows.tuning import STUDY_KEY, tune_flow

    shutil.copy(PARAMS, tmp_path / "params.yaml")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TEXTRNN_OPTUNA_STORAGE", raising=False)
    small = [override for override in OVERRIDES if not override.startswith("tune.heartbeat")]
    with prefect_test_harness(server_startup_timeout=180):
        state = tune_flow(params="params.yaml", overrides=[*small, "train.epochs=2", "data.sample.train_rows=600"],
                          variant="gru", study="flow-study", trials=3, return_state=True)
        result = state.result()
        with get_client(sync_client=True) as prefect:
            run = prefect.read_flow_run(state.state_details.flow_run_id)
            (artifact,) = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[STUDY_KEY])),
                                                 limit=1, sort=ArtifactSort.CREATED_DESC)
    assert sum(result["counts"].get(state_name, 0) for state_name in ("COMPLETE", "PRUNED")) == 3
    assert [worker["state"] for worker in result["workers"]] == ["COMPLETED"]
    assert run.name == "tune-gru-flow-study" and {"textrnn", "variant:gru", "stage:tune"} <= set(run.tags)
    for number in range(3):
        assert f"\n| {number} | " in artifact.data
    assert f"trial {result['best']['number']}" in artifact.data and result["mlflow_parent_run_id"] in artifact.data
