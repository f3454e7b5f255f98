"""Test-set metrics and plots for one variant, scored through `OnnxClassifier` (the exported graph).

Writes `metrics/<variant>/eval.json` (accuracy, macro-F1, per-class precision/recall/F1, confusion matrix)
and `plots/<variant>/` (`predictions.json`, `confusion_matrix.png`, `learning_curves.png` from the training history).

Before scoring, `check_export` verifies that `model.onnx`, its `tokenizer.json` and `model.pt` are the
files `export.json` recorded, and that the prepared test split is the one encode read; eval.json records
the sha256 of what was scored (`lineage`), which register verifies again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # headless: plots are files, never windows
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support  # noqa: E402

from textrnn import lineage  # noqa: E402
from textrnn.config import Config, Variant  # noqa: E402
from textrnn.errors import TextrnnError  # noqa: E402
from textrnn.files import atomic_path, read_json, write_json  # noqa: E402

if TYPE_CHECKING:
    from textrnn.inference import OnnxClassifier


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, classes: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix (rows = truth)."""
    predictions = probabilities.argmax(axis=1)
    class_ids = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=class_ids, zero_division=0
    )
    return {
        "test_accuracy": float((predictions == labels).mean()),
        "test_macro_f1": float(f1.mean()),
        "rows": int(len(labels)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support)
        },
        "confusion_matrix": confusion_matrix(labels, predictions, labels=class_ids).tolist(),
        "classes": list(classes),
    }


def plot_confusion_matrix(confusion: list[list[int]], classes: list[str], path: Path) -> None:
    matrix = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (row, col), count in np.ndenumerate(matrix):
        colour = "white" if count > matrix.max() / 2 else "black"
        ax.text(col, row, str(count), ha="center", va="center", color=colour)
    fig.tight_layout()
    _save_figure(fig, path)


def plot_learning_curves(history: list[dict[str, float]], title: str, path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    for split in ("train", "val"):
        loss_ax.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
        acc_ax.plot(epochs, [h[f"{split}_accuracy"] for h in history], marker="o", label=split)
    loss_ax.set(xlabel="epoch", ylabel="loss", title=f"{title}: loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title=f"{title}: accuracy")
    for ax in (loss_ax, acc_ax):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, path)


def _save_figure(fig: plt.Figure, path: Path) -> None:
    from textrnn.checkpoints import writing

    try:
        with writing(path), atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)


def _write_json(path: Path, payload: Any) -> None:
    from textrnn.checkpoints import writing

    with writing(path):
        write_json(path, payload)


def write_evaluation(cfg: Config, variant_name: str, labels: np.ndarray, probabilities: np.ndarray,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compute metrics, write eval.json, the headline metrics and the plots; returns the eval.json payload."""
    report = {"variant": variant_name, **classification_metrics(labels, probabilities, cfg.data.classes), **(extra or {})}
    paths = cfg.paths
    predictions = _prediction_records(labels, probabilities.argmax(axis=1), report["classes"])
    _write_json(paths.predictions_file(variant_name), predictions)
    plot_confusion_matrix(report["confusion_matrix"], report["classes"], paths.confusion_matrix_plot(variant_name))
    train_summary = paths.train_report(variant_name)
    trained = read_json(train_summary) if train_summary.is_file() else {}
    if trained:
        plot_learning_curves(trained["history"], variant_name, paths.learning_curves_plot(variant_name))
    _write_json(paths.eval_report(variant_name), report)
    _write_json(paths.headline_metrics(variant_name), headline(report, trained))
    return report


HEADLINE_KEYS = ("test_accuracy", "test_macro_f1", "inference_latency_ms_b1")


def headline(report: dict[str, Any], trained: dict[str, Any]) -> dict[str, float]:
    """The few numbers that compare variants at a glance (`dvc metrics show`, one row each): eval.json's
    test accuracy, macro-F1 and batch-1 latency, and train.json's best validation accuracy. eval.json and
    train.json keep the rest (per-class figures, config, history) as plain outputs."""
    numbers = {key: float(report[key]) for key in HEADLINE_KEYS if key in report}
    if "best_val_accuracy" in trained:
        numbers["best_val_accuracy"] = float(trained["best_val_accuracy"])
    return numbers


def _prediction_records(labels: np.ndarray, predictions: np.ndarray, classes: list[str]) -> list[dict[str, str | int]]:
    """One {actual, predicted} record per test row, the shape `dvc plots` counts into a confusion matrix
    (.dvc/plots/class_confusion.json), with each class's position in data.classes (`actual_index`,
    `predicted_index`): the matrix orders its axes by them, as the PNG does, rather than alphabetically."""
    return [{"actual": classes[true], "predicted": classes[pred],
             "actual_index": int(true), "predicted_index": int(pred)} for true, pred in zip(labels, predictions)]


LATENCY_TEXTS = 50


def batch1_latency_ms(classifier: OnnxClassifier, texts: list[str], warmup: int = 5) -> float:
    """Median wall time in ms of `classifier.predict([text])` over `texts`, tokenization included,
    after `warmup` untimed calls (the first calls pay for lazy allocations)."""
    for text in texts[:warmup]:
        classifier.predict([text])
    timings = []
    for text in texts:
        started = time.perf_counter()
        classifier.predict([text])
        timings.append((time.perf_counter() - started) * 1000.0)
    return float(np.median(timings)) if timings else float("nan")


def check_export(cfg: Config, variant_name: str) -> dict[str, Any]:
    """The variant's export.json, after checking that `model.onnx`, the bundled `tokenizer.json` and
    `model.pt` are the files it recorded. Raises TextrnnError when not exported, LineageError (naming
    both files) when one of them changed since."""
    paths = cfg.paths
    report_file, onnx_file = paths.export_report(variant_name), paths.onnx_file(variant_name)
    if not report_file.is_file() or not onnx_file.is_file():
        raise TextrnnError(f"{paths.model_dir(variant_name)}: no {onnx_file.name} with its {report_file.name} "
                           "(run `textrnn export` first)")
    try:
        report = read_json(report_file)
    except ValueError:
        raise lineage.LineageError(f"{report_file}: not valid JSON; run `textrnn export` again") from None
    lineage.verify_digest(onnx_file, report.get("onnx_sha256"), report_file)
    lineage.verify_digest(paths.served_tokenizer(variant_name), report.get("tokenizer_sha256"), report_file)
    lineage.verify_digest(paths.model_file(variant_name), report.get("model_pt_sha256"), report_file)
    return report


def evaluate_variant(cfg: Config, variant: Variant, device: str = "auto") -> dict[str, Any]:
    """Score the exported variant (`models/<V>/model.onnx`, through `OnnxClassifier`: the shipped model
    is the evaluated one) on the prepared test texts, and write its metrics and plots.

    eval.json also records the runtime, the onnxruntime provider that ran, the median batch-1 latency in
    ms, and the lineage of what was scored. Raises TextrnnError when the variant is not exported yet,
    LineageError when the export or the test split changed since (`check_export`).
    """
    from textrnn.data import read_split
    from textrnn.inference import OnnxClassifier

    variant_name = variant.name
    check_export(cfg, variant_name)
    check_test_split(cfg)
    paths = cfg.paths
    scored = lineage.record(
        [paths.onnx_file(variant_name), paths.served_tokenizer(variant_name), paths.prepared_split("test")],
        {"data": {"classes": list(cfg.data.classes)}},
    )
    classifier = OnnxClassifier.from_model_dir(paths.model_dir(variant_name), device=device)
    if classifier.classes != list(cfg.data.classes):
        raise TextrnnError(
            f"{variant_name}: the exported model's classes {classifier.classes} are not data.classes "
            f"{list(cfg.data.classes)}; re-run train and export"
        )
    test = read_split(cfg.paths.prepared, "test")
    texts = test["text"].tolist()
    _, probabilities = classifier.predict(texts)
    extra = {
        "runtime": "onnxruntime",
        "provider": classifier.provider,
        "inference_latency_ms_b1": batch1_latency_ms(classifier, texts[:LATENCY_TEXTS]),
        "lineage": scored,
    }
    return write_evaluation(cfg, variant_name, test["label"].to_numpy(np.int64), probabilities, extra)


def check_test_split(cfg: Config) -> None:
    """Raise LineageError unless the prepared test split is the one encode read (its sha256 among the
    inputs encode's lineage.json records), i.e. from the same preparation as the model's training data."""
    record_file = cfg.paths.encoded_lineage
    if not record_file.is_file():
        raise lineage.LineageError(f"{record_file}: not found (made by an older textrnn?); re-run `textrnn encode`")
    try:
        inputs = read_json(record_file).get("inputs") or {}
    except (ValueError, AttributeError):
        raise lineage.LineageError(f"{record_file}: not a lineage record; re-run `textrnn encode`") from None
    test_split = cfg.paths.prepared_split("test")
    # Matched by file name: the record's keys are relative to the directory encode ran in.
    recorded = next((digest for key, digest in inputs.items() if Path(key).name == test_split.name), None)
    lineage.verify_digest(test_split, recorded, record_file)
