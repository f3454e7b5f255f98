"""`textrnn tune`: one worker of a variant's Optuna study (see `textrnn.tune`), from the command line.

Registered on `textrnn.cli.app` when that module loads. Start the same command in more terminals or on
more machines with one `tune.storage` (or $TEXTRNN_OPTUNA_STORAGE) and they share the study; the Prefect
flow `flows/tuning.py` starts such workers on a work pool.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from textrnn.cli import (
    DEFAULT_PARAMS, ParamsOption, ProgressOption, SetOption, VariantOption, _pipeline_flow, app, console, load_config,
    user_errors,
)
from textrnn.errors import TextrnnError


def _trial_line(trial: Any) -> None:
    value = f"val loss {trial.value:.4f}" if trial.value is not None else ""
    if trial.state.name == "PRUNED" and trial.intermediate_values:
        epoch = max(trial.intermediate_values)
        value = f"at epoch {epoch}, val loss {trial.intermediate_values[epoch]:.4f}"
    params = " ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                      for key, value in trial.params.items())
    console.print(f"trial {trial.number}: {trial.state.name.lower()} {value}  ({params})")


def _print_summary(result: dict[str, Any]) -> None:
    counts = ", ".join(f"{count} {state.lower()}" for state, count in sorted(result["counts"].items()))
    console.print(f"study {result['study']} ({result['variant']}): {counts}")
    best = result["best"]
    if best is None:
        return
    table = Table("best trial", "val loss", "val accuracy", *best["params"])
    accuracy = best["val_accuracy"]
    table.add_row(str(best["number"]), f"{best['value']:.4f}", "" if accuracy is None else f"{accuracy:.4f}",
                  *(f"{value:.4g}" if isinstance(value, float) else str(value) for value in best["params"].values()))
    console.print(table)
    if result["mlflow_parent_run_id"]:
        console.print(f"MLflow: the study's run is {result['mlflow_parent_run_id']}; select its trials and Compare "
                      "for the parallel-coordinates plot")


def _storage_errors(error: Exception) -> TextrnnError:
    from textrnn.mlflow_connection import redacted_uri

    first = (str(error).splitlines() or [type(error).__name__])[0]
    return TextrnnError(f"Optuna storage: {redacted_uri(first)[:300]}")


@app.command()
@user_errors
def tune(
    variant: VariantOption,
    params: ParamsOption = DEFAULT_PARAMS,
    set_: SetOption = None,
    trials: Annotated[int | None, typer.Option("--trials", min=1, help="Trials in the study (default tune.trials).")] = None,
    study: Annotated[str | None, typer.Option(
        "--study", help="Study to create or join (default <variant>-<config fingerprint>).")] = None,
    apply: Annotated[bool, typer.Option(
        "--apply", help="Then add the best params to params.yaml as a new variant and run the pipeline on it.")] = False,
    as_: Annotated[str | None, typer.Option("--as", help="The new variant's name (default <variant>_tuned).")] = None,
    progress: ProgressOption = True,
) -> None:
    """Search a variant's options (params.yaml `tune.space`) with Optuna, pruning on validation loss.

    This process is one worker: more `textrnn tune` processes on the same study and storage share its trials.
    Each trial is an MLflow child run of the study's run, with the same params and metrics as `textrnn train`.
    """
    import sqlalchemy.exc

    from textrnn import steps
    from textrnn import tune as tuning

    from textrnn.tune_space import check_space

    cfg = load_config(params, set_)
    check_space(cfg, cfg.variant(variant), str(params))
    study = study or tuning.default_study(cfg, variant)
    try:
        tuning.open_study(cfg, cfg.variant(variant), study)  # a wrong storage or study fails before the data work
        steps.prepare_step(cfg, wait=True)
        steps.encode_step(cfg, wait=True)
        result = tuning.work(cfg, variant, study, trials, on_trial=_trial_line, show_progress=progress)
        _print_summary(result)
        if not apply:
            return
        tuned = tuning.best_variant(cfg, variant, study, as_)
    except (sqlalchemy.exc.SQLAlchemyError, ValueError, ImportError) as error:
        if isinstance(error, ValueError) and "storage" not in str(error).lower():
            raise
        raise _storage_errors(error) from None
    tuning.apply(params, tuned)
    console.print(f"{params}: variant {tuned.name} added; training it through the pipeline")
    from textrnn.report import print_pipeline

    print_pipeline(console, _pipeline_flow()(params=str(params), variants=[tuned.name], overrides=list(set_ or [])))
