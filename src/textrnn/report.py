"""What the terminal shows of results: the variant comparison (`textrnn compare`, from the files the steps
wrote) and the pipeline's table (`textrnn pipeline`, from the rows it collected), with where to look next."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from textrnn.config import Config
from textrnn.files import read_json


def comparison_rows(cfg: Config) -> list[dict[str, Any]]:
    """Rows for every configured variant that has an eval.json, best test accuracy first."""
    rows = []
    for name, variant in cfg.variants.items():
        eval_path, train_path = cfg.paths.eval_report(name), cfg.paths.train_report(name)
        if not eval_path.is_file():
            continue
        evaluation = read_json(eval_path)
        trained = read_json(train_path) if train_path.is_file() else {}
        rows.append(
            {
                "variant": name,
                "cell": variant.cell + (" (bi)" if variant.bidirectional else ""),
                "masked": "yes" if variant.masked else "no",
                "accuracy": evaluation["test_accuracy"],
                "macro_f1": evaluation["test_macro_f1"],
                "epochs": trained.get("epochs_run", "-"),
                "samples/s": round(trained.get("samples_per_second", 0.0)),
                "padding": trained.get("padding_efficiency", float("nan")),
            }
        )
    return sorted(rows, key=lambda row: -row["accuracy"])


# The table's short headings, spelled out under it.
PIPELINE_COLUMNS = ("acc: test accuracy; F1: test macro-F1; ms b1: ONNX Runtime latency of one text (ms); "
                    "pad: padding efficiency of training batches; ver: registered model version; "
                    "train: trained now or a cache hit")


def _where_to_look(result: dict[str, Any]) -> list[str]:
    """Where the run can be read next: the MLflow parent run, the Prefect server."""
    lines = []
    if result.get("mlflow_parent_run_id"):
        from textrnn.mlflow_connection import redacted_uri, tracking_uri

        uri = tracking_uri()
        ui = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else redacted_uri(uri)
        lines.append(f"MLflow: run {result['mlflow_parent_run_id']} (its variant runs nested below it): {ui}")
    from prefect.settings import get_current_settings

    api = (get_current_settings().api.url or "").strip()
    lines.append(f"Prefect: {api.removesuffix('/api')}" if api else
                 "Prefect: ran on a temporary local server (set PREFECT_API_URL to keep the flow runs)")
    return lines


def print_pipeline(console: Console, result: dict[str, Any]) -> None:
    promotion = result["promotion"]
    champion = promotion.get("champion_after")
    table = Table(title="textrnn pipeline", caption=PIPELINE_COLUMNS)
    for column in ("variant", "acc", "F1", "ms b1", "pad", "ver", "champion", "train"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for row in sorted(result["variants"], key=lambda r: -r["test_accuracy"]):
        table.add_row(
            row["variant"], f"{row['test_accuracy']:.4f}", f"{row['test_macro_f1']:.4f}",
            f"{row['inference_latency_ms_b1']:.2f}", f"{row['padding_efficiency']:.3f}", row.get("model_version") or "-",
            "yes" if champion is not None and row.get("model_version") == champion else "",
            "cached" if row["train_cached"] else "trained",
        )
    console.print(table)
    outcome = "promoted" if promotion["promoted"] else "not promoted"
    console.print(f"{outcome}: {promotion['reason']}")
    for line in _where_to_look(result):
        console.print(line)
