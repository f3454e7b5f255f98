"""MLflow for a study (`textrnn.tune`): one parent run per study, one child run per trial, the best trial
recorded on the parent.

A trial's run has the params (`provenance.variant_params`) and metric keys of a `textrnn train` run of the
same variant, so trials, tuned variants and `dvc exp run -S` experiments compare side by side in the
MLflow UI (Compare, parallel coordinates). A trial's run ends FINISHED (complete), KILLED and tagged
`trial_state=PRUNED` (pruned), or FAILED; a run whose worker died is marked KILLED once Optuna has failed
its trial (`close_dead_trials`). The study's run is at rest between workers (FINISHED), like a variant's.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from textrnn import runs, stopping
from textrnn.config import Config, Variant
from textrnn.mlflow_connection import _one_line_errors, connect
from textrnn.provenance import run_tags, variant_params
from textrnn.tracking import _context_tags, _log_params

log = logging.getLogger("textrnn")

STUDY_TAG, TRIAL_TAG, STATE_TAG = "tune_study", "trial_number", "trial_state"


def _study_runs(client: MlflowClient, experiment_id: str, study: str) -> list[Any]:
    found = client.search_runs([experiment_id], f"tags.run_kind = 'tune' AND tags.{STUDY_TAG} = '{study}'")
    return sorted(found, key=lambda run: (run.info.start_time, run.info.run_id))


@stopping.deferred()
def study_run(cfg: Config, variant: Variant, study: str) -> str:
    """The id of study `study`'s parent run, created by the first worker that asks."""
    experiment_id = connect(cfg)
    client = MlflowClient()
    with _one_line_errors(f"study {study}: MLflow"):
        found = _study_runs(client, experiment_id, study)
        if found:
            return found[0].info.run_id
        run = client.create_run(experiment_id, run_name=f"tune {variant.name} {study}", tags={
            **_context_tags(), **run_tags(cfg), "run_kind": "tune", STUDY_TAG: study, "variant": variant.name})
        _log_params(client, run.info.run_id, variant_params(cfg, variant))
        client.set_terminated(run.info.run_id)
        # Workers that start together may each create one: the first made is the study's, the rest go.
        winner = _study_runs(client, experiment_id, study)[0].info.run_id
        if winner != run.info.run_id:
            client.delete_run(run.info.run_id)
        return winner


@contextlib.contextmanager
def trial_run(cfg: Config, candidate: Variant, parent_run_id: str, study: str, number: int,
              pruned: type[BaseException]) -> Iterator[str]:
    """A child run of the study's run for trial `number`, active while the trial trains; yields its id.
    Ends KILLED with `trial_state=PRUNED` on `pruned`, else as any stage's run (`runs.ending`)."""
    experiment_id = connect(cfg)
    client = MlflowClient()
    with _one_line_errors(f"{candidate.name} trial {number}: MLflow"):
        with stopping.deferred():
            run = client.create_run(experiment_id, run_name=f"{candidate.name} trial {number}", tags={
                **_context_tags(), **run_tags(cfg), "run_kind": "trial", "variant": candidate.name,
                STUDY_TAG: study, TRIAL_TAG: str(number), "mlflow.parentRunId": parent_run_id,
                **runs.attempt_tags()})
            _log_params(client, run.info.run_id, variant_params(cfg, candidate))
            mlflow.start_run(run_id=run.info.run_id)
        try:
            with runs.ending():
                yield run.info.run_id
        except pruned:
            with stopping.deferred():
                client.set_tag(run.info.run_id, STATE_TAG, "PRUNED")
                client.set_terminated(run.info.run_id, runs.KILLED)
            raise


@stopping.deferred()
def end_trial(state: str) -> None:
    """Tag the active trial run with its final Optuna state (COMPLETE, FAIL) before it ends."""
    mlflow.set_tag(STATE_TAG, state)


@stopping.deferred()
def close_dead_trials(cfg: Config, study: str, failed: set[int]) -> list[str]:
    """Mark KILLED the MLflow runs still RUNNING of trials numbered in `failed` (Optuna failed them: their
    worker died); returns their run ids. Runs are found by their tags, which they carry from creation (a
    worker may die before the trial records its run id)."""
    experiment_id = connect(cfg)
    client = MlflowClient()
    running = client.search_runs([experiment_id], f"tags.run_kind = 'trial' AND tags.{STUDY_TAG} = '{study}' AND "
                                                  "attributes.status = 'RUNNING'")
    closed = []
    for run in running:
        if int(run.data.tags[TRIAL_TAG]) not in failed:
            continue
        client.set_tag(run.info.run_id, STATE_TAG, "FAIL")
        client.set_terminated(run.info.run_id, runs.KILLED)
        log.warning("mlflow run=%s of trial %s was left RUNNING by a dead worker: marked KILLED", run.info.run_id,
                    run.data.tags[TRIAL_TAG])
        closed.append(run.info.run_id)
    return closed


@stopping.deferred()
def record_best(parent_run_id: str, best: dict[str, Any], counts: dict[str, int]) -> None:
    """On the study's run: the best trial's metrics (as metrics), params (as `best.<key>` tags, which can
    change as the study grows, unlike params), its run id, and how many trials ended how."""
    client = MlflowClient()
    metrics = {"best_val_loss": best["value"], "best_val_accuracy": best.get("val_accuracy"),
               "best_trial": best["number"], **{f"trials_{state.lower()}": count for state, count in counts.items()}}
    stamp = int(time.time() * 1000)
    client.log_batch(
        parent_run_id,
        metrics=[mlflow.entities.Metric(key, float(value), stamp, 0) for key, value in metrics.items()
                 if value is not None],
        tags=[mlflow.entities.RunTag(key, str(value)) for key, value in
              {**{f"best.{key}": value for key, value in best["params"].items()},
               "best_run_id": best.get("run_id") or ""}.items()],
    )

