"""A variant's hyperparameter sweep (`textrnn.tune`) as Prefect flows: `tune` runs the study on `tune-worker`
flow runs, then publishes its trials as a markdown artifact.

`orchestration.mode` picks where the workers run, as for the pipeline (flows/training.py):
- `local`: one worker, a subflow of this process (more: `textrnn tune` in more terminals, same storage);
- `distributed`: `workers` flow runs of the `tune-worker` deployment on work pool `orchestration.work_pool`,
  started together. They share the study through the Optuna storage every worker reaches
  (`TEXTRNN_OPTUNA_STORAGE`: the team stack's PostgreSQL, infra/README.md), each taking the next trial.

The flow resolves the config once and hands it to every worker as data (with this checkout's commit), as
the pipeline does; a worker prepares its data from it (a cache hit where they exist).

A dead worker: its trial stays RUNNING until a worker on the study finds its heartbeat stale and fails it
(`textrnn.tune`): the study loses that trial, never itself. So a worker flow run that ends Crashed (its
machine died: flows/resilience.py) fails this flow only if the study is still short of trials once every
worker has ended. The others normally run the missing trials (a worker waits while trials run elsewhere
and replaces one whose heartbeat goes stale); if none is left (every worker crashed), this flow waits
until the dead trials' heartbeats are stale and starts that many workers again, up to
CRASH_RESUBMISSIONS times. A worker that ends Failed (its own error)
or Cancelled fails the flow, after the artifact is published, even when the study completed: the other
workers' trials must not hide an error.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prefect import flow, runtime, tags, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.deployments import run_deployment
from prefect.task_runners import ThreadPoolTaskRunner

from flows.labels import AUTO_SCHEDULED_TAG, TEXTRNN_TAG, stage_tag, tag_flow_run, variant_tag
from flows.logs import textrnn_logs_in_prefect
from flows.resilience import ensure_zombie_automation
from flows.training import CRASH_RESUBMISSIONS, Overrides, PrefectSteps, check_commit, gpu_slot, load_config
from textrnn import config as config_module
from textrnn import tune, tune_space
from textrnn.config import DEFAULT_PARAMS, Config
from textrnn.pipeline import PipelineError
from textrnn.provenance import git_tags

TUNE_WORKER_DEPLOYMENT = "tune-worker/tune-worker"
TUNE_STAGE, WORKER_STAGE = "tune", "tune-worker"  # `stage:` tags, after the flows' names
STUDY_KEY = "tune-study"  # the artifact's key (lowercase letters, digits and dashes)
DONE = ("COMPLETE", "PRUNED")  # Optuna states that count towards a study's trials

log = logging.getLogger("textrnn")


def run_label(variant: str, study: str) -> str:
    """`tune-<study>` for a study named after its variant (the default `<variant>-<fingerprint>`), else
    `tune-<variant>-<study>`: the variant once in the name either way."""
    return f"tune-{study}" if study.startswith(f"{variant}-") else f"tune-{variant}-{study}"


def _tune_run_name() -> str:
    """A run someone started from a deployment keeps the name it was given (as the pipeline's does); any
    other is `run_label`, or `tune-<variant>` until the flow has resolved the default study."""
    run = runtime.flow_run
    if runtime.deployment.id and AUTO_SCHEDULED_TAG not in (run.tags or []):
        return run.name
    variant, study = run.parameters["variant"], run.parameters.get("study")
    return run_label(variant, study) if study else f"tune-{variant}"


def _name_after_study(variant: str, study: str) -> None:
    """Rename this flow run from `tune-<variant>` to `run_label` once the study is known."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None or context.flow_run.name != f"tune-{variant}":
        return
    name = run_label(variant, study)
    with get_client(sync_client=True) as client:
        client.set_flow_run_name(context.flow_run.id, name)
    context.flow_run.name = name


def _worker_run_name() -> str:
    """From the deployment: the name the tune flow gave it (`<tune run>-worker-<n>`); a subflow: `...-worker`."""
    run = runtime.flow_run
    if runtime.deployment.id:
        return run.name
    return f"{run_label(run.parameters['variant'], run.parameters['study'])}-worker"


def _log_trial(trial: Any) -> None:
    value = "-" if trial.value is None else f"{trial.value:.4f}"
    log.info("trial %d %s: val loss %s, params %s", trial.number, trial.state.name.lower(), value, trial.params)


@flow(name="tune-worker", flow_run_name=_worker_run_name, persist_result=False)
def tune_worker_flow(config: dict[str, Any], variant: str, study: str, trials: int,
                     code_commit: str | None = None, allow_other_commit: bool = False) -> dict[str, Any]:
    """One worker of study `study` (`textrnn.tune.work`) from the tune flow's resolved `config`
    (`Config.model_dump`): trials until the study has `trials` complete or pruned; returns its summary.

    Refuses when this checkout is not at `code_commit` (trials of other code would be compared). The
    data come from the cached prepare/encode tasks; the trials hold this worker's GPU slot.
    """
    tag_flow_run(TEXTRNN_TAG, variant_tag(variant), stage_tag(WORKER_STAGE))  # started by hand: none yet
    with textrnn_logs_in_prefect(), tags(TEXTRNN_TAG, variant_tag(variant)):
        check_commit(code_commit, allow_other_commit)
        cfg = config_module.from_dict(config, source="the tune flow's config")
        cfg.variant(variant)
        PrefectSteps().prepare(cfg)
        PrefectSteps().encode(cfg)
        with gpu_slot():
            return tune.work(cfg, variant, study, trials, on_trial=_log_trial)


@task(name="tune-worker-on-pool", task_run_name="{name}", tags=[stage_tag(WORKER_STAGE)], cache_policy=NO_CACHE)
def run_worker_on_pool(name: str, parameters: dict[str, Any]) -> dict[str, str]:
    """Run flow run `name` of the `tune-worker` deployment and wait for it; returns its name and how it
    ended. Its result is not read back (that needs result storage all machines share): the study has it."""
    flow_run = run_deployment(TUNE_WORKER_DEPLOYMENT, parameters=parameters, flow_run_name=name,
                              tags=[variant_tag(parameters["variant"]), stage_tag(WORKER_STAGE)],
                              timeout=None)  # as long as the trials take
    return _outcome(flow_run.name, flow_run.state)


def _outcome(name: str, state: Any) -> dict[str, str]:
    """How a worker ended: {flow_run, state (COMPLETED, CRASHED, FAILED, ...), message}."""
    return {"flow_run": name, "state": state.type.value if state else "UNKNOWN",
            "message": getattr(state, "message", None) or ""}


def check_worker_deployment(cfg: Config) -> None:
    """Raise PipelineError unless `tune-worker` is deployed on `orchestration.work_pool`, and the storage is
    one other machines can reach (a sqlite file would give each worker a study of its own)."""
    from prefect.exceptions import ObjectNotFound

    if tune.storage_url(cfg).startswith("sqlite"):
        raise PipelineError(f"orchestration.mode distributed: the Optuna storage must be shared; set "
                            f"{tune.STORAGE_ENV} (or tune.storage) here and on every worker")
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_deployment_by_name(TUNE_WORKER_DEPLOYMENT).work_pool_name
        except ObjectNotFound:
            raise PipelineError(f"deployment '{TUNE_WORKER_DEPLOYMENT}' not found (run `make deploy`)") from None
    if pool != cfg.orchestration.work_pool:
        raise PipelineError(f"deployment '{TUNE_WORKER_DEPLOYMENT}' runs on work pool '{pool}', but "
                            f"orchestration.work_pool is '{cfg.orchestration.work_pool}'")


def _done(study: Any) -> int:
    return sum(1 for trial in study.get_trials(deepcopy=False) if trial.state.name in DONE)


def workers_on_pool(cfg: Config, study: Any, trials: int, label: str, parameters: dict[str, Any],
                    count: int) -> list[dict[str, str]]:
    """`count` worker flow runs at once, and again for the crashed ones while the study is short; returns
    how every worker ended."""
    outcomes: list[dict[str, str]] = []
    for attempt in range(CRASH_RESUBMISSIONS + 1):
        with ThreadPoolTaskRunner(max_workers=count) as runner:
            futures = [runner.submit(run_worker_on_pool, {"name": f"{label}-worker-{len(outcomes) + index + 1}",
                                                          "parameters": parameters}) for index in range(count)]
            for future in futures:
                future.wait()
        ended = [future.result() if future.state.is_completed() else  # run_deployment itself failed
                 _outcome(f"{label}-worker-{len(outcomes) + index + 1}", future.state)
                 for index, future in enumerate(futures)]
        outcomes += ended
        crashed = sum(outcome["state"] == "CRASHED" for outcome in ended)
        if (not crashed or _done(study) >= trials or attempt == CRASH_RESUBMISSIONS
                or any(outcome["state"] not in ("COMPLETED", "CRASHED") for outcome in ended)):
            return outcomes
        # The crashed workers' trials stay RUNNING until their heartbeat is stale (2 x heartbeat_seconds):
        # a worker started before then would take them for live ones and leave at once.
        log.warning("study %s: %d worker(s) crashed with trials missing; starting them again", study.study_name,
                    crashed)
        time.sleep(2 * cfg.tune.heartbeat_seconds)
        count = crashed
    return outcomes


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                     for key, value in params.items()) or "-"


def _trial_row(trial: Any) -> str:
    value = "-" if trial.value is None else f"{trial.value:.4f}"
    if trial.state.name == "PRUNED" and trial.intermediate_values:  # its value is that of the epoch it stopped at
        value += f" (epoch {max(trial.intermediate_values)})"
    run_id = trial.user_attrs.get(tune.RUN_ID_ATTR)
    return (f"| {trial.number} | {trial.state.name.lower()} | {value} | {_params(trial.params)} "
            f"| {f'`{run_id}`' if run_id else '-'} |")


def study_markdown(result: dict[str, Any], trials: list[Any], outcomes: list[dict[str, str]]) -> str:
    """The study's trials (number, state, val loss, params, MLflow run), its best trial and its workers."""
    counts = ", ".join(f"{count} {state.lower()}" for state, count in sorted(result["counts"].items()))
    lines = [f"## Study `{result['study']}` ({result['variant']})", "", f"Trials: {counts or 'none'}.", ""]
    if (best := result["best"]) is not None:
        accuracy = "" if best["val_accuracy"] is None else f", val accuracy {best['val_accuracy']:.4f}"
        lines += [f"**Best**: trial {best['number']}, val loss {best['value']:.4f}{accuracy}, "
                  f"{_params(best['params'])}, MLflow run `{best['run_id'] or '-'}`", ""]
    lines += ["| trial | state | val loss | params | MLflow run |", "|---:|---|---:|---|---|",
              *(_trial_row(trial) for trial in sorted(trials, key=lambda trial: trial.number))]
    if result.get("mlflow_parent_run_id"):
        lines += ["", f"MLflow: the study's run is `{result['mlflow_parent_run_id']}`."]
    ended = [f"{outcome['flow_run']} {outcome['state'].lower()}"
             + ("" if outcome["state"] == "COMPLETED" else f" ({outcome['message']})") for outcome in outcomes]
    return "\n".join([*lines, "", "**Workers**: " + "; ".join(ended)]) + "\n"


@flow(name="tune", flow_run_name=_tune_run_name)
def tune_flow(params: str = str(DEFAULT_PARAMS), overrides: Overrides = None, variant: str = "bilstm_mean",
              study: str | None = None, trials: int | None = None, workers: int = 2,
              allow_other_commit: bool = False) -> dict[str, Any]:
    """Search `variant`'s options (`tune.space`) in study `study` (default `<variant>-<config fingerprint>`:
    an unchanged config resumes its study) until it has `trials` (default `tune.trials`) complete or pruned
    trials, on `workers` workers (distributed mode; local mode runs one). Returns `textrnn.tune.summary` with
    `workers` (how each worker flow run ended); raises PipelineError naming what went wrong, in one line."""
    tag_flow_run(TEXTRNN_TAG, variant_tag(variant), stage_tag(TUNE_STAGE))
    with textrnn_logs_in_prefect(), tags(TEXTRNN_TAG, variant_tag(variant)):
        cfg = load_config(params, overrides)
        chosen = cfg.variant(variant)
        tune_space.check_space(cfg, chosen)  # before any worker starts
        study = study or tune.default_study(cfg, variant)
        trials = trials or cfg.tune.trials
        _name_after_study(variant, study)
        distributed = cfg.orchestration.mode == "distributed"
        if distributed:
            check_worker_deployment(cfg)
            ensure_zombie_automation()  # crashed worker runs are detected, then replaced
        # The data once, here: errors surface before any worker starts, and workers sharing this workspace
        # find them cached instead of racing for the data lock.
        PrefectSteps().prepare(cfg)
        PrefectSteps().encode(cfg)
        # Created here, once: workers starting together would race to create the storage's tables, and a
        # study of another config is refused before any worker starts.
        optuna_study = tune.open_study(cfg, chosen, study)
        label = run_label(variant, study)
        parameters = {"config": cfg.model_dump(mode="json"), "variant": variant, "study": study, "trials": trials,
                      "code_commit": git_tags()["git_commit"], "allow_other_commit": allow_other_commit}
        if distributed:
            outcomes = workers_on_pool(cfg, optuna_study, trials, label, parameters, max(workers, 1))
        else:
            outcomes = [_outcome(f"{label}-worker", tune_worker_flow(**parameters, return_state=True))]
        parent_run_id = None
        if cfg.tracking.enabled:
            from textrnn import tune_tracking

            parent_run_id = tune_tracking.study_run(cfg, chosen, study)
        result = {**tune.summary(cfg, optuna_study, parent_run_id), "workers": outcomes}
        create_markdown_artifact(study_markdown(result, optuna_study.get_trials(deepcopy=False), outcomes),
                                 key=STUDY_KEY, description=f"Trials of Optuna study {study} ({variant}) and the best.")
        failures = [f"{outcome['flow_run']} ended {outcome['state'].lower()}: {outcome['message']}"
                    for outcome in outcomes if outcome["state"] != "COMPLETED"]
        if (done := _done(optuna_study)) < trials:
            raise PipelineError("; ".join([f"study {study}: {done} of {trials} trials complete or pruned", *failures]))
        if any(outcome["state"] not in ("COMPLETED", "CRASHED") for outcome in outcomes):
            raise PipelineError(f"study {study} completed, but " + "; ".join(failures))
        for failure in failures:  # only crashed ones: the other workers completed the study
            log.warning("study %s completed without %s", study, failure)
    return result
