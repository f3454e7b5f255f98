"""`textrnn`: the command line over the pipeline's steps (DVC stages call exactly these commands).

Every command takes `--params FILE` and repeatable `--set dotted.key=value`. Errors a user can fix print
one line (`error: ...`) and exit with status 2.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from textrnn import config as config_module
from textrnn.config import Config
from textrnn.errors import TextrnnError

app = typer.Typer(
    name="textrnn",
    help="Recurrent text classifiers: prepare data, train, export to ONNX, evaluate, register, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)
log = logging.getLogger("textrnn")

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="params.yaml to read.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-S", help="Override a key: dotted.key=value (repeatable), as `dvc exp run -S`."),
]
VariantOption = Annotated[str, typer.Option("--variant", "-v", help="Variant name from params.yaml `variants`.")]
ProgressOption = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]


@app.callback()
def main(
    verbose: Annotated[int, typer.Option("--verbose", "-V", count=True, help="More logs (-V info, -VV debug).")] = 0,
) -> None:
    """Configure quiet, structured logging: key=value lines on stderr, warnings only by default."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
    root = logging.getLogger("textrnn")
    root.handlers[:] = [handler]
    root.setLevel(level)


def user_errors(command):
    """Turn a TextrnnError into one `error: ...` line and exit status 2, with no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except TextrnnError as error:
            err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper


def load_config(params: Path, overrides: list[str] | None) -> Config:
    return config_module.load(params, overrides or [])


@app.command()
@user_errors
def prepare(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Load, validate and split the data source into data/prepared/{train,val,test}.parquet."""
    from textrnn.data import prepare as run_prepare

    cfg = load_config(params, set_)
    report = run_prepare(cfg)
    rows = ", ".join(f"{split} {count}" for split, count in report["rows"].items())
    console.print(f"prepared {cfg.data.source}: {rows} -> {cfg.paths.prepared}")


@app.command()
@user_errors
def encode(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Fit the vocabulary on train, encode every split, and measure bucketing's padding efficiency."""
    from textrnn.tokens import encode as run_encode

    cfg = load_config(params, set_)
    report = run_encode(cfg)
    at_64 = next(r for r in report["by_batch_size"] if r["batch_size"] == 64)
    console.print(
        f"vocabulary {report['vocab_size']}; padding efficiency at batch 64: "
        f"random {at_64['padding_efficiency_random']:.3f}, bucketed {at_64['padding_efficiency_bucketed']:.3f}"
    )


@app.command()
@user_errors
def train(
    variant: VariantOption,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    resume: Annotated[bool, typer.Option(help="Continue from the variant's last checkpoint.")] = False,
    progress: ProgressOption = True,
) -> None:
    """Train one variant; writes models/<variant>/model.pt and metrics/<variant>/train.json."""
    from textrnn.train import train_variant

    cfg = load_config(params, set_)
    summary = train_variant(cfg, variant, resume=resume, show_progress=progress)
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
def export(variant: VariantOption, params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Export one variant to models/<variant>/model.onnx; fails unless onnxruntime matches torch (parity)."""
    from textrnn.export import export_variant, onnx_path

    cfg = load_config(params, set_)
    report = export_variant(cfg, variant)
    console.print(
        f"{variant}: {onnx_path(cfg.paths.model_dir(variant))} (opset {report['opset']}), parity max |logit diff| "
        f"{report['max_abs_diff']:.2e} over {len(report['shapes'])} shapes"
    )


@app.command()
@user_errors
def evaluate(
    variant: VariantOption,
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    device: DeviceOption = "auto",
) -> None:
    """Evaluate one exported variant on the test split through onnxruntime; writes metrics/<variant>/eval.json
    and plots/<variant>/."""
    from textrnn.evaluate import evaluate_variant

    cfg = load_config(params, set_)
    report = evaluate_variant(cfg, variant, device=device)
    console.print(
        f"{variant}: test accuracy {report['test_accuracy']:.4f}, macro-F1 {report['test_macro_f1']:.4f} "
        f"({report['provider']}, {report['inference_latency_ms_b1']:.2f} ms at batch 1)"
    )


def resolve_model(ref: str, cfg: Config) -> Path:
    """The local model directory (model.onnx + tokenizer.json) that `--model REF` names.

    REF is a variant name (-> `paths.models/<V>`) or a path to a model directory. MLflow model URIs
    (`models:/name@alias`, `runs:/...`) are recognised here and will be resolved to a downloaded
    directory by the MLflow integration; until then they raise TextrnnError.
    """
    if ref.startswith(("models:/", "runs:/")):
        raise TextrnnError(f"--model {ref}: MLflow model URIs are not supported yet; pass a variant or a directory")
    if ref in cfg.variants:
        return cfg.paths.model_dir(ref)
    if Path(ref).is_dir():
        return Path(ref)
    raise TextrnnError(f"--model {ref}: neither a variant ({', '.join(cfg.variants)}) nor a model directory")


PREDICT_CHUNK = 4096  # texts per progress step when scoring a file


def _prediction_record(text: str, label: str, probabilities, classes: list[str]) -> dict[str, Any]:
    return {"text": text, "label": label, "probabilities": {name: round(float(p), 6) for name, p in zip(classes, probabilities)}}


def _score_to_jsonl(classifier, texts: list[str], output: Path, show_progress: bool) -> None:
    """Score `texts` in chunks and write one JSON record per text to `output` (atomically)."""
    from textrnn.files import atomic_path
    from textrnn.runtime import progress_bar

    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8") as handle, progress_bar(show_progress) as bar:
        task = bar.add_task(f"scoring {len(texts)} texts", total=len(texts), rate=0.0)
        started = time.perf_counter()
        for start in range(0, len(texts), PREDICT_CHUNK):
            chunk = texts[start : start + PREDICT_CHUNK]
            labels, probabilities = classifier.predict(chunk)
            for text, label, row in zip(chunk, labels, probabilities):
                handle.write(json.dumps(_prediction_record(text, label, row, classifier.classes)) + "\n")
            done = start + len(chunk)
            bar.update(task, completed=done, rate=done / max(time.perf_counter() - started, 1e-9))


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
    model: Annotated[str, typer.Option("--model", "-m", help="A variant name (models/<V>) or a model directory.")],
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify.", show_default=False)] = None,
    input_: Annotated[
        Path | None, typer.Option("--input", "-i", help="Texts from a file: CSV with a 'text' column, JSONL, or lines.")
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write JSONL predictions here.")] = None,
    device: DeviceOption = "auto",
    params: ParamsOption = Path("params.yaml"),
    set_: SetOption = None,
    progress: ProgressOption = True,
) -> None:
    """Classify texts with an exported model; prints label + probabilities, or writes JSONL with --output."""
    from textrnn.inference import OnnxClassifier, read_texts

    if bool(texts) == (input_ is not None):
        raise TextrnnError("give texts as arguments or --input FILE (exactly one of them)")
    cfg = load_config(params, set_)
    classifier = OnnxClassifier.from_model_dir(resolve_model(model, cfg), device=device)
    texts = read_texts(input_) if input_ is not None else list(texts)
    if output is not None:
        _score_to_jsonl(classifier, texts, output, progress)
        console.print(f"scored {len(texts)} texts on {classifier.provider} -> {output}")
        return
    labels, probabilities = classifier.predict(texts)
    if input_ is None:
        _print_predictions(texts, labels, probabilities, classifier.classes)
        return
    for text, label, row in zip(texts, labels, probabilities):
        typer.echo(json.dumps(_prediction_record(text, label, row, classifier.classes)))


@app.command()
@user_errors
def compare(params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
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


if __name__ == "__main__":
    app()
