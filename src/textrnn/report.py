"""The variant comparison table: one row per evaluated variant, from the files the steps wrote."""

from __future__ import annotations

from typing import Any

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
