"""Hyperparameter search for one variant: an Optuna study that any number of workers share.

A worker (`work`) joins study `name` in the storage (`storage_url`: `tune.storage`, `TEXTRNN_OPTUNA_STORAGE`,
or sqlite under `paths.cache`) and runs trials until the study has `trials` complete or pruned ones, counting
those other workers are running. Each trial samples the variant's options from `tune.space`
(`textrnn.tune_space`), trains with the very function `textrnn train` uses, in a scratch directory of its
own under `paths.cache/tune/`, and is one MLflow child run of the study's run (`textrnn.tune_tracking`).

- Pruning: every epoch reports its validation loss; Optuna's MedianPruner stops a trial that is worse than
  the median of finished trials at that epoch (`tune.prune_after_trials`, `tune.prune_after_epochs`).
- A dead worker: workers beat a heartbeat into the storage (Optuna's); a trial whose worker stopped beating
  for 2 x `tune.heartbeat_seconds` is marked FAIL by the next worker on the study (its MLflow run KILLED)
  and another trial takes its place, so killing a worker loses one trial, never the study.
- A study belongs to one variant and one config (its fingerprint is a study attribute): joining it with
  another is refused, so no trial is compared with trials trained on other data or settings.
- A trial that diverges (`TrainingDiverged`) is FAIL and the study goes on; any other error stops the worker.

Reproducible: a trial's params are recorded (Optuna and MLflow), and training them again as a variant
(`apply`) gives the trial's metrics bit for bit on CPU. The sampler is seeded per worker, so which params
are tried depends on how many workers ran.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from textrnn import train, tune_space
from textrnn.config import Config, ConfigError, Variant
from textrnn.errors import TextrnnError
from textrnn.output_paths import PathsConfig
from textrnn.provenance import shared_params
from textrnn.train import TrainingDiverged

log = logging.getLogger("textrnn")
# Optuna's own lines (a trial finished, pruned) go through logging like textrnn's: quiet unless -V.
optuna.logging.disable_default_handler()
optuna.logging.enable_propagation()

STORAGE_ENV = "TEXTRNN_OPTUNA_STORAGE"
STORAGE_FILE = "optuna.db"
SCRATCH_SUBDIR = "tune"
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
RUN_ID_ATTR = "mlflow_run_id"  # the trial's user attribute naming its MLflow run (textrnn.tune_tracking)
WAIT_POLL_SECONDS = 2  # how often a worker with nothing to start looks at the study again


class TuneError(TextrnnError):
    """A study cannot go on (its trials keep failing, or it belongs to another variant or config)."""


def storage_url(cfg: Config) -> str:
    """Where the study lives: $TEXTRNN_OPTUNA_STORAGE, else `tune.storage`, else sqlite in `paths.cache`."""
    url = os.environ.get(STORAGE_ENV) or cfg.tune.storage
    if url:
        return url
    path = (Path.cwd() / cfg.paths.cache / STORAGE_FILE).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def fingerprint(cfg: Config, variant: Variant) -> str:
    """What every trial of a study must share: the data, tokenizer, batching and training settings, the
    variant being tuned and the search space."""
    shared = {"params": shared_params(cfg), "variant": variant.config.model_dump(mode="json"),
              "space": {key: value.model_dump(mode="json") for key, value in cfg.tune.space.items()}}
    return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:16]


def open_study(cfg: Config, variant: Variant, name: str) -> optuna.Study:
    """Study `name` in the storage, created when new; refuses one made for another variant or config."""
    heartbeat = cfg.tune.heartbeat_seconds
    with warnings.catch_warnings():  # the heartbeat is "experimental" since Optuna 2.9
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        url = storage_url(cfg)
        # sqlite: workers on one machine write heartbeats and trials to one file; wait for its lock.
        engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                                             grace_period=2 * heartbeat)
    # Seeded per worker: workers sharing one seed would draw the same first params.
    sampler = optuna.samplers.TPESampler(seed=(cfg.seed + os.getpid()) % 2**32)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=cfg.tune.prune_after_trials,
                                         n_warmup_steps=cfg.tune.prune_after_epochs)
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                direction="minimize", load_if_exists=True)
    mine = {"variant": variant.name, "fingerprint": fingerprint(cfg, variant)}
    recorded = {key: study.user_attrs.get(key) for key in mine}
    if recorded == {"variant": None, "fingerprint": None}:
        for key, value in mine.items():
            study.set_user_attr(key, value)
    elif recorded != mine:
        raise ConfigError(
            f"study '{name}' tunes variant '{recorded['variant']}' with config {recorded['fingerprint']}; this run "
            f"is '{mine['variant']}' with {mine['fingerprint']} (data, training settings or tune.space differ): "
            "name a new --study")
    return study


def _scratch(cfg: Config, study: str, number: int) -> Path:
    return cfg.paths.cache / SCRATCH_SUBDIR / study / f"trial-{number}"


def trial_config(cfg: Config, study: str, number: int) -> Config:
    """`cfg` with models, metrics and plots in the trial's scratch directory (the encoded data is shared)."""
    scratch = _scratch(cfg, study, number)
    paths = PathsConfig(**{**cfg.paths.model_dump(), "models": scratch / "models", "metrics": scratch / "metrics",
                           "plots": scratch / "plots"})
    return cfg.model_copy(update={"paths": paths})


def _objective(cfg: Config, variant: Variant, study: str, parent_run_id: str | None, show_progress: bool):
    tracking = None
    if parent_run_id is not None:
        from textrnn import tracking, tune_tracking

    def objective(trial: optuna.Trial) -> float:
        candidate = tune_space.tuned(variant, tune_space.suggest(trial, cfg.tune.space))
        trial_cfg = trial_config(cfg, study, trial.number)

        def on_epoch(name: str, metrics: dict[str, float]) -> None:
            if tracking is not None:
                tracking.log_epoch(name, metrics)
            trial.report(metrics["val_loss"], int(metrics["epoch"]))
            if trial.should_prune():
                log.info("trial=%d pruned at epoch %d val_loss=%.4g", trial.number, metrics["epoch"], metrics["val_loss"])
                raise optuna.TrialPruned(f"epoch {metrics['epoch']}: val loss {metrics['val_loss']:.4g}")

        try:
            if tracking is None:
                summary = train.train_variant(trial_cfg, candidate, on_epoch=on_epoch, show_progress=show_progress)
            else:
                with tune_tracking.trial_run(trial_cfg, candidate, parent_run_id, study, trial.number,
                                             optuna.TrialPruned) as run_id:
                    trial.set_user_attr(RUN_ID_ATTR, run_id)
                    try:
                        summary = train.train_variant(trial_cfg, candidate, on_epoch=on_epoch,
                                                      show_progress=show_progress)
                    except TrainingDiverged:
                        tune_tracking.end_trial("FAIL")
                        raise
                    tracking.log_training_summary(trial_cfg, candidate.name, summary)
                    tune_tracking.end_trial("COMPLETE")
        finally:
            shutil.rmtree(_scratch(cfg, study, trial.number), ignore_errors=True)
        trial.set_user_attr("val_accuracy", summary["best_val_accuracy"])
        trial.set_user_attr("best_epoch", summary["best_epoch"])
        return summary["best_val_loss"]

    return objective


def _counts(study: optuna.Study) -> Counter:
    return Counter(trial.state for trial in study.get_trials(deepcopy=False))


def default_study(cfg: Config, variant_name: str) -> str:
    """`<variant>-<fingerprint>`: the same config resumes its study, a changed one starts another."""
    return f"{variant_name}-{fingerprint(cfg, cfg.variant(variant_name))[:8]}"


def work(cfg: Config, variant_name: str, study_name: str, trials: int | None = None,
         on_trial: Callable[[optuna.trial.FrozenTrial], None] | None = None, show_progress: bool = False
         ) -> dict[str, Any]:
    """Join study `study_name` for `variant_name` and run trials until it has `trials` (default
    `tune.trials`) complete or pruned ones, counting those running elsewhere; returns `summary`.
    `on_trial` is called with each trial this worker ends; `show_progress` shows each epoch's bar."""
    variant = cfg.variant(variant_name)
    tune_space.check_space(cfg, variant)
    trials = trials or cfg.tune.trials
    study = open_study(cfg, variant, study_name)
    parent_run_id = None
    if cfg.tracking.enabled:
        from textrnn import tune_tracking

        parent_run_id = tune_tracking.study_run(cfg, variant, study_name)
    objective = _objective(cfg, variant, study_name, parent_run_id, show_progress)
    ended: list[TrialState] = []  # this worker's trials, in order

    def _ended(trial: optuna.trial.FrozenTrial) -> None:
        ended.append(trial.state)
        if on_trial is not None:
            on_trial(trial)
    while True:
        _reap_dead_trials(cfg, study, parent_run_id)
        counts = _counts(study)
        done = sum(counts[state] for state in DONE)
        if done >= trials:
            break
        if done + counts[TrialState.RUNNING] >= trials:
            # The rest are running on other workers. Wait rather than leave: if one of them dies, its trial
            # is failed once its heartbeat is stale, and this worker runs the trial in its place. Checked
            # every few seconds, so the study's last worker leaves soon after the last trial ends.
            time.sleep(min(cfg.tune.heartbeat_seconds, WAIT_POLL_SECONDS))
            continue
        if ended[-trials:] == [TrialState.FAIL] * trials:
            raise TuneError(f"study '{study_name}': the last {trials} trials of this worker failed; see the log")
        study.optimize(objective, n_trials=1, catch=(TrainingDiverged,), gc_after_trial=False,
                       callbacks=[lambda _, trial: _ended(trial)])
    with contextlib.suppress(OSError):  # the study's scratch directory, once no trial of this worker uses it
        (cfg.paths.cache / SCRATCH_SUBDIR / study_name).rmdir()
    return summary(cfg, study, parent_run_id)


def _reap_dead_trials(cfg: Config, study: optuna.Study, parent_run_id: str | None) -> None:
    """Fail the trials whose worker stopped beating (Optuna's heartbeat) and close their MLflow runs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    if parent_run_id is not None:
        from textrnn import tune_tracking

        failed = {trial.number for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        if failed:
            tune_tracking.close_dead_trials(cfg, study.study_name, failed)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The complete trial with the lowest validation loss (the first on a tie), or None."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return min(complete, key=lambda trial: (trial.value, trial.number)) if complete else None


def summary(cfg: Config, study: optuna.Study, parent_run_id: str | None) -> dict[str, Any]:
    """{study, variant, counts, best: {number, value, val_accuracy, params, run_id}, mlflow_parent_run_id};
    the best trial is also recorded on the study's MLflow run."""
    counts = {state.name: count for state, count in _counts(study).items()}
    trial = best_trial(study)
    best = None
    if trial is not None:
        best = {"number": trial.number, "value": trial.value, "val_accuracy": trial.user_attrs.get("val_accuracy"),
                "params": trial.params, "run_id": trial.user_attrs.get(RUN_ID_ATTR)}
        if parent_run_id is not None:
            from textrnn import tune_tracking

            tune_tracking.record_best(parent_run_id, best, counts)
    return {"study": study.study_name, "variant": study.user_attrs.get("variant"), "counts": counts, "best": best,
            "mlflow_parent_run_id": parent_run_id}


def best_variant(cfg: Config, variant_name: str, study_name: str, name: str | None = None) -> Variant:
    """The variant with the study's best params, named `name` (default `<variant>_tuned`)."""
    variant = cfg.variant(variant_name)
    study = open_study(cfg, variant, study_name)
    best = best_trial(study)
    if best is None:
        raise TuneError(f"study '{study_name}' has no complete trial yet")
    return tune_space.tuned(variant, best.params, name or f"{variant_name}_tuned")


def apply(params_file: Path, tuned_variant: Variant) -> Config:
    """Add `tuned_variant` to the variants of `params_file` (replacing one of that name) and rewrite the
    file as `textrnn params` renders it; returns the new file's config. Only the file's own values are
    written (no --set override); its comments become config.py's."""
    from textrnn.config import from_dict, read_raw
    from textrnn.files import atomic_path
    from textrnn.params_render import render, variant_fields

    raw = read_raw(params_file)
    if "variants" not in raw:  # the file relied on config.py's variants: keep them
        raw["variants"] = {name: variant_fields(variant) for name, variant in Config().variants.items()}
    raw["variants"][tuned_variant.name] = variant_fields(tuned_variant.config)
    cfg = from_dict(raw, source=str(params_file))
    with atomic_path(params_file) as staged:
        staged.write_text(render(cfg), encoding="utf-8")
    return cfg
