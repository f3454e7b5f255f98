"""`textrnn`: the command line over the pipeline's steps (DVC stages call exactly these commands).

Every command takes `--params FILE` and repeatable `--set dotted.key=value`. Errors a user can fix print
one line (`error: ...`) and exit with status 2.
"""

from __future__ import annotations

import functools
import logging
import sys
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


@app.command()
@user_errors
def evaluate(variant: VariantOption, params: ParamsOption = Path("params.yaml"), set_: SetOption = None) -> None:
    """Evaluate one variant on the test split; writes metrics/<variant>/eval.json and plots/<variant>/."""
    from textrnn.evaluate import evaluate_variant

    cfg = load_config(params, set_)
    report = evaluate_variant(cfg, variant)
    console.print(f"{variant}: test accuracy {report['test_accuracy']:.4f}, macro-F1 {report['test_macro_f1']:.4f}")


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
