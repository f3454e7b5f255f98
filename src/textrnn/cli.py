"""`textrnn`: the command line over the pipeline's steps (DVC stages call exactly these commands).

Every command takes `--params FILE` and repeatable `--set dotted.key=value`. Errors a user can fix print
one line (`error: ...`) and exit with status 2.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from textrnn import config as config_module
from textrnn import stopping, terminal
from textrnn.config import DEFAULT_PARAMS, Config
from textrnn.errors import Terminated, TextrnnError

app = typer.Typer(
    name="textrnn",
    help="Recurrent text classifiers: prepare data, train, export to ONNX, evaluate, register, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = terminal.console()
err_console = terminal.console(stderr=True)
log = logging.getLogger("textrnn")

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="params.yaml to read.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-S", help="Override a key: dotted.key=value (repeatable), as `dvc exp run -S`."),
]
VariantOption = Annotated[str, typer.Option("--variant", "-v", help="Variant name from params.yaml `variants`.")]
ProgressOption = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
WaitOption = Annotated[
    bool,
    typer.Option("--wait", help="If another process is writing the same outputs, wait for it instead of failing."),
]


@app.callback()
def main(
    verbose: Annotated[
        int, typer.Option("--verbose", "-V", count=True, metavar="", help="More logs (-V info, -VV debug).")
    ] = 0,
) -> None:
    """Configure quiet, structured logging: key=value lines on stderr, warnings only by default."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    # The libraries we drive log every run and task at INFO; read before they are imported, so set here.
    for variable in ("PREFECT_LOGGING_LEVEL", "MLFLOW_LOGGING_LEVEL"):
        os.environ.setdefault(variable, logging.getLevelName(level))
    # MLflow draws a download bar for every artifact it fetches (loading a logged model to check it, too).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true" if verbose else "false")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
    root = logging.getLogger("textrnn")
    root.handlers[:] = [handler]
    root.setLevel(level)
    _check_argv_utf8(sys.argv[1:])
    # SIGTERM (a scheduler, `kill`, a Prefect cancellation) unwinds like Ctrl-C: open MLflow runs end KILLED
    # and temporary files are removed by the blocks that made them; a store write in progress finishes first.
    stopping.install()


def _check_argv_utf8(argv: list[str]) -> None:
    """Python decodes argv bytes that are not UTF-8 into lone surrogates; name the argument instead of
    failing later with an encoding traceback."""
    for index, argument in enumerate(argv, start=1):
        try:
            argument.encode("utf-8")
        except UnicodeEncodeError:
            printable = argument.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
            _fail(f"argument {index} ({printable}) is not valid UTF-8")


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"error: {message}", style="bold red", soft_wrap=True)
    raise typer.Exit(code=code)


def _os_error_line(error: OSError) -> str:
    """One line for an OSError from the file system: the file, then what the system said."""
    where = error.filename if error.filename is not None else "?"
    reason = (error.strerror or os.strerror(error.errno)) if error.errno else str(error)
    hint = {errno.ENOSPC: " (free some space and run again)", errno.EROFS: " (a read-only file system)"}.get(error.errno, "")
    return f"{where}: {reason}{hint}"


def user_errors(command):
    """Turn what a user can act on into one `error: ...` line and exit status 2, with no traceback: our own
    TextrnnErrors, file-system errors (named by file) and undecodable input. A stop signal exits 128 + its
    number. Anything else is a bug and keeps its traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except TextrnnError as error:
            _fail(str(error))
        except OSError as error:  # a full disk, a read-only directory, a directory where a file goes
            _fail(_os_error_line(error))
        except UnicodeDecodeError as error:
            _fail(f"input is not valid UTF-8 (byte {error.start}: {error.reason})")
        except (Terminated, KeyboardInterrupt) as error:
            signum = error.signum if isinstance(error, Terminated) else signal.SIGINT
            _fail(f"stopped by {signal.Signals(signum).name}; outputs written so far are kept", code=128 + signum)

    return wrapper


def load_config(params: Path, overrides: list[str] | None) -> Config:
    return config_module.load(params, overrides or [])


@app.command()
@user_errors
def prepare(params: ParamsOption = DEFAULT_PARAMS, set_: SetOption = None, wait: WaitOption = False) -> None:
    """Load, validate and split the data source into data/prepared/{train,val,test}.parquet."""
    from textrnn.steps import prepare_step

    cfg = load_config(params, set_)
    report = prepare_step(cfg, wait=wait)
    rows = ", ".join(f"{split} {count}" for split, count in report["rows"].items())
    console.print(f"prepared {cfg.data.source}: {rows} -> {cfg.paths.prepared}")


@app.command()
@user_errors
def encode(params: ParamsOption = DEFAULT_PARAMS, set_: SetOption = None, wait: WaitOption = False) -> None:
    """Fit the vocabulary on train, encode every split, and measure bucketing's padding efficiency."""
    from textrnn.steps import encode_step

    cfg = load_config(params, set_)
    report = encode_step(cfg, wait=wait)
    at_64 = next(r for r in report["by_batch_size"] if r["batch_size"] == 64)
    console.print(
        f"vocabulary {report['vocab_size']}; padding efficiency at batch 64: "
        f"random {at_64['padding_efficiency_random']:.3f}, bucketed {at_64['padding_efficiency_bucketed']:.3f}"
    )


@app.command()
@user_errors
def train(
    variant: VariantOption,
    params: ParamsOption = DEFAULT_PARAMS,
    set_: SetOption = None,
    resume: Annotated[bool, typer.Option(help="Continue from the variant's last checkpoint.")] = False,
    progress: ProgressOption = True,
    wait: WaitOption = False,
) -> None:
    """Train one variant; writes models/<variant>/model.pt and metrics/<variant>/train.json.

    With tracking on, logs to a new MLflow run for the variant (nested under $TEXTRNN_MLFLOW_PARENT_RUN_ID
    or the DVC experiment's run when set); --resume continues the variant's recorded run.
    """
    from textrnn.steps import train_step

    cfg = load_config(params, set_)
    summary = train_step(cfg, variant, resume=resume, show_progress=progress, wait=wait)
    console.print(
        f"{variant}: best val accuracy {summary['best_val_accuracy']:.4f} at epoch {summary['best_epoch']}, "
        f"{summary['samples_per_second']:.0f} samples/s, padding efficiency {summary['padding_efficiency']:.3f}"
    )


DeviceOption = Annotated[
    str,
    typer.Option(
        "--device", "-d", help="auto: CUDA when onnxruntime can use it, else CPU; cuda: fail rather than fall back; cpu."
    ),
]


@app.command()
@user_errors
def export(
    variant: VariantOption, params: ParamsOption = DEFAULT_PARAMS, set_: SetOption = None, wait: WaitOption = False
) -> None:
    """Export one variant to models/<variant>/model.onnx; fails unless onnxruntime matches torch (parity)."""
    from textrnn.steps import export_step

    cfg = load_config(params, set_)
    report = export_step(cfg, variant, wait=wait)
    console.print(
        f"{variant}: {cfg.paths.onnx_file(variant)} (opset {report['opset']}), parity max |logit diff| "
        f"{report['max_abs_diff']:.2e} over {len(report['shapes'])} shapes"
    )


@app.command()
@user_errors
def evaluate(
    variant: VariantOption,
    params: ParamsOption = DEFAULT_PARAMS,
    set_: SetOption = None,
    device: DeviceOption = "auto",
    wait: WaitOption = False,
) -> None:
    """Evaluate one exported variant on the test split through onnxruntime; writes metrics/<variant>/eval.json
    and plots/<variant>/."""
    from textrnn.steps import evaluate_step

    cfg = load_config(params, set_)
    report = evaluate_step(cfg, variant, device=device, wait=wait)
    console.print(
        f"{variant}: test accuracy {report['test_accuracy']:.4f}, macro-F1 {report['test_macro_f1']:.4f} "
        f"({report['provider']}, {report['inference_latency_ms_b1']:.2f} ms at batch 1)"
    )


@app.command()
@user_errors
def register(
    variant: VariantOption, params: ParamsOption = DEFAULT_PARAMS, set_: SetOption = None, wait: WaitOption = False
) -> None:
    """Register the variant's exported, evaluated MLflow model as a version of registry.model_name."""
    from textrnn.steps import register_step

    cfg = load_config(params, set_)
    result = register_step(cfg, variant, wait=wait)
    if not result["registered"]:
        console.print(f"{variant}: not registered ({result['reason']})")
        return
    console.print(
        f"{variant}: {result['model_name']} version {result['version']} "
        f"(test_accuracy {float(result['test_accuracy']):.4f}, ONNX parity passed: {result['onnx_parity_passed']})"
    )


@app.command()
@user_errors
def promote(
    params: ParamsOption = DEFAULT_PARAMS,
    set_: SetOption = None,
    version: Annotated[
        list[str] | None,
        typer.Option("--version", help="Candidate version (repeatable); default: the newest version of each variant."),
    ] = None,
) -> None:
    """Move alias `champion` to the best candidate if its ONNX parity passed and its test accuracy beats the
    champion's by registry.min_delta; otherwise change nothing and say why. Writes metrics/promotion.json."""
    from textrnn.steps import promote_step

    cfg = load_config(params, set_)
    decision = promote_step(cfg, version)
    outcome = "promoted" if decision["promoted"] else "not promoted"
    console.print(f"{outcome}: {decision['reason']}")
    if decision.get("champion_after"):
        console.print(f"champion: {decision['model_name']} version {decision['champion_after']}")


def _print_predictions(texts: list[str], labels: list[str], probabilities, classes: list[str]) -> None:
    table = Table(title="textrnn predict")
    table.add_column("text", overflow="fold", max_width=60)
    table.add_column("label")
    for name in classes:
        table.add_column(name, justify="right")
    for text, label, row in zip(texts, labels, probabilities):
        table.add_row(text, label, *(f"{p:.3f}" for p in row))
    console.print(table)


@app.command()
@user_errors
def predict(
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m",
            help="A variant name (models/<V>), a model directory, or an MLflow model URI (models:/agnews-rnn@champion).",
        ),
    ],
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify.", show_default=False)] = None,
    input_: Annotated[
        Path | None, typer.Option("--input", "-i", help="Texts from a file: CSV with a 'text' column, JSONL, or lines.")
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write JSONL predictions here.")] = None,
    device: DeviceOption = "auto",
    params: ParamsOption = DEFAULT_PARAMS,
    set_: SetOption = None,
    progress: ProgressOption = True,
) -> None:
    """Classify texts with an exported model; prints label + probabilities, or writes JSONL with --output."""
    from textrnn.inference import OnnxClassifier
    from textrnn.serving import check_output_path, prediction_record, read_texts, resolve_model, write_predictions_jsonl

    if bool(texts) == (input_ is not None):
        raise TextrnnError("give texts as arguments or --input FILE (exactly one of them)")
    cfg = load_config(params, set_)
    if output is not None:
        check_output_path(output)  # before the model loads: a bad --output fails at once
    classifier = OnnxClassifier.from_model_dir(resolve_model(model, cfg), device=device)
    texts = read_texts(input_) if input_ is not None else list(texts)
    if output is not None:
        write_predictions_jsonl(classifier, texts, output, progress)
        console.print(f"scored {len(texts)} texts on {classifier.provider} -> {output}")
        return
    labels, probabilities = classifier.predict(texts)
    if input_ is None:
        _print_predictions(texts, labels, probabilities, classifier.classes)
        return
    for text, label, row in zip(texts, labels, probabilities):
        typer.echo(json.dumps(prediction_record(text, label, row, classifier.classes)))


@app.command()
@user_errors
def compare(params: ParamsOption = DEFAULT_PARAMS, set_: SetOption = None) -> None:
    """Print the variants' results side by side (from metrics/<variant>/{train,eval}.json)."""
    from textrnn.report import comparison_rows

    cfg = load_config(params, set_)
    rows = comparison_rows(cfg)
    if not rows:
        raise TextrnnError(f"{cfg.paths.metrics}: no evaluated variants yet (run `textrnn evaluate`)")
    table = Table(title="textrnn variants")
    for column in rows[0]:
        table.add_column(column, justify="left" if column == "variant" else "right")
    for row in rows:
        table.add_row(*(f"{value:.4f}" if isinstance(value, float) else str(value) for value in row.values()))
    console.print(table)


@app.command("params")
@user_errors
def show_params(
    defaults: Annotated[
        bool, typer.Option("--defaults", help="config.py's defaults, reading no params file: `textrnn params --defaults > params.yaml`.")
    ] = False,
    params: ParamsOption = DEFAULT_PARAMS,
    set_: SetOption = None,
) -> None:
    """Print the config a run would use, validated, as a params file (params.yaml with every --set applied)."""
    from textrnn.params_render import render

    cfg = config_module.from_dict(config_module.apply_overrides({}, set_ or [])) if defaults else load_config(params, set_)
    typer.echo(render(cfg), nl=False)


def _pipeline_flow():
    """The `training_pipeline` Prefect flow, from the `flows` package installed beside textrnn."""
    from flows.training import check_prefect_api, training_pipeline

    check_prefect_api()
    return training_pipeline


@app.command()
@user_errors
def pipeline(
    params: ParamsOption = DEFAULT_PARAMS,
    set_: SetOption = None,
    variants: Annotated[
        str | None, typer.Option("--variants", help="Comma-separated variants to train (default: all in params.yaml).")
    ] = None,
) -> None:
    """Run the whole pipeline as a Prefect flow: prepare, encode, then every variant (train, export, evaluate,
    register) concurrently, then promote. Unchanged steps are cached. With PREFECT_API_URL the run is recorded
    on that server; without it Prefect starts a temporary local one."""
    cfg = load_config(params, set_)  # a config error is one line, before Prefect starts
    names = [name.strip() for name in variants.split(",") if name.strip()] if variants else None
    for name in names or []:
        cfg.variant(name)
    training_pipeline = _pipeline_flow()
    from textrnn.report import print_pipeline

    print_pipeline(console, training_pipeline(params=str(params), variants=names, overrides=list(set_ or [])))


from textrnn import cli_tune  # noqa: E402, F401 - registers `textrnn tune` on the app

if __name__ == "__main__":
    # Under `python -m textrnn.cli` this file runs as __main__, and cli_tune extended the app of the module
    # `textrnn.cli` (imported anew by it): run that app.
    from textrnn.cli import app as extended_app

    extended_app()
