"""The promotion decision, as pure logic: which registry version the `champion` alias should point to, and
why. No MLflow here: `textrnn.registry` reads the versions' tags and metrics and applies the decision.

The alias moves only to a candidate whose ONNX parity passed and whose `test_accuracy` beats the
champion's by more than zero and at least `registry.min_delta` (a tie leaves the champion in place);
the first eligible candidate becomes the first champion.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def candidate(version: Any, metrics: dict[str, float]) -> dict[str, Any]:
    """A version's promotion facts: version, variant and parity from its tags, test_accuracy from `metrics`
    (its logged model's, `registry.version_metrics`)."""
    tags = version.tags or {}
    return {
        "version": str(version.version),
        "variant": tags.get("variant", "?"),
        "test_accuracy": metrics.get("test_accuracy"),
        "onnx_parity_passed": tags.get("onnx_parity_passed") == "true",
        "onnx_parity_max_abs_diff": metrics.get("onnx_parity_max_abs_diff"),
    }


def decide_promotion(
    candidates: Sequence[dict[str, Any]], champion: dict[str, Any] | None, min_delta: float
) -> dict[str, Any]:
    """Pick the version the `champion` alias should point to, and say why (no side effects).

    Candidates without `test_accuracy` or with failed ONNX parity are rejected; the current champion
    is not its own challenger. The best remaining one (highest accuracy, newest on ties) is promoted
    when there is no champion, or when it beats the champion's accuracy by more than zero and by at
    least `min_delta`. Returns {promoted, version, variant, reason, champion_before, rejected, ...}.
    """
    rejected = []
    eligible = []
    for candidate in candidates:
        if champion is not None and candidate["version"] == champion["version"]:
            continue
        if candidate["test_accuracy"] is None:
            rejected.append({**candidate, "reason": "no test_accuracy tag (run `textrnn register` after evaluate)"})
        elif not candidate["onnx_parity_passed"]:
            rejected.append({**candidate, "reason": "ONNX parity did not pass"})
        else:
            eligible.append(candidate)
    decision: dict[str, Any] = {"champion_before": champion, "min_delta": min_delta, "rejected": rejected}
    if not eligible:
        why = "; ".join(f"v{r['version']} ({r['variant']}): {r['reason']}" for r in rejected) or "no new versions"
        return {**decision, "promoted": False, "version": None, "variant": None,
                "reason": f"no eligible candidate: {why}"}
    best = max(eligible, key=lambda c: (c["test_accuracy"], int(c["version"])))
    decision.update(version=best["version"], variant=best["variant"], test_accuracy=best["test_accuracy"])
    if champion is None:
        return {**decision, "promoted": True,
                "reason": f"v{best['version']} ({best['variant']}) becomes the first champion "
                          f"(test_accuracy {best['test_accuracy']:.4f})"}
    delta = best["test_accuracy"] - (champion["test_accuracy"] or 0.0)
    decision["delta"] = delta
    if delta > 0 and delta >= min_delta:
        return {**decision, "promoted": True,
                "reason": f"v{best['version']} ({best['variant']}) test_accuracy {best['test_accuracy']:.4f} beats "
                          f"champion v{champion['version']} ({champion['variant']}) {champion['test_accuracy']:.4f} "
                          f"by {delta:+.4f} >= min_delta {min_delta:g}"}
    return {**decision, "promoted": False,
            "reason": f"best candidate v{best['version']} ({best['variant']}) test_accuracy "
                      f"{best['test_accuracy']:.4f} does not beat champion v{champion['version']} "
                      f"({champion['variant']}) {champion['test_accuracy']:.4f} by more than zero and at least "
                      f"min_delta {min_delta:g} (delta {delta:+.4f})"}
