"""The variant comparison the pipeline publishes as a Prefect markdown artifact."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

COMPARISON_KEY = "variant-comparison"  # artifact keys: lowercase letters, digits and dashes


def _number(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def _run_cell(row: dict[str, Any]) -> str:
    run_id = row.get("mlflow_run_id")
    if not run_id:
        return "-"
    return f"[{run_id[:8]}]({row['mlflow_run_url']})" if row.get("mlflow_run_url") else f"`{run_id[:8]}`"


def comparison_markdown(rows: Sequence[dict[str, Any]], promotion: dict[str, Any],
                        failures: Sequence[str] = ()) -> str:
    """A markdown table of the variants (best test accuracy first), the promotion decision and any failures.

    `rows` are `train_variant_flow` results; `promotion` is `promote_step`'s decision.
    """
    champion = promotion.get("champion_after")
    lines = [
        "## Variant comparison",
        "",
        "| variant | test accuracy | macro-F1 | ONNX latency b1 (ms) | padding efficiency | MLflow run "
        "| model version | champion | ran on | training |",
        "|---|---:|---:|---:|---:|---|---:|:---:|---|---|",
    ]
    for row in sorted(rows, key=lambda r: -(r.get("test_accuracy") or 0.0)):
        version = row.get("model_version")
        is_champion = champion is not None and version == champion
        lines.append(
            f"| {row['variant']} | {_number(row.get('test_accuracy'), 4)} | {_number(row.get('test_macro_f1'), 4)} "
            f"| {_number(row.get('inference_latency_ms_b1'), 2)} | {_number(row.get('padding_efficiency'), 3)} "
            f"| {_run_cell(row)} | {version or '-'} | {'**champion**' if is_champion else ''} "
            f"| {row.get('worker', '-')} ({row.get('device', '?')}) "
            f"| {'cached' if row.get('train_cached') else 'trained'} |"
        )
    outcome = "promoted" if promotion.get("promoted") else "not promoted"
    lines += ["", f"**Promotion**: {outcome}: {promotion.get('reason', '-')}"]
    if champion is not None and not any(row.get("model_version") == champion for row in rows):
        lines.append(f"(champion: version {champion}, from an earlier run)")
    if failures:
        lines += ["", "**Failed variants**:", *(f"- {failure}" for failure in failures)]
    return "\n".join(lines) + "\n"
