"""Fit one variant: bucketed batches, Adam, gradient clipping, early stopping, resumable checkpoints.

Outputs, under the config's paths:
- `models/<variant>/model.pt`: the best epoch's weights with the variant config, vocabulary size and
  class names, enough to rebuild the model with no other file (`load_model`);
- `models/<variant>/checkpoint.pt`: everything needed to continue after the last finished epoch;
- `metrics/<variant>/train.json`: per-epoch loss/accuracy for train and val, throughput, padding.

Integrity, in the order a run goes:
- inputs first: the encoded splits and tokenizer must match encode's `lineage.json` (`check_inputs`), and a
  `--resume` checkpoint must have been made from the same inputs and training config (`ResumePoint`);
- then the variant's previous outputs are cleared (`clear_outputs`), so a run killed from here on can
  never leave an older model next to its own records;
- training stops at the first non-finite loss, gradient or validation loss (`TrainingDiverged`), so no
  untrained or NaN model is ever published and no JSON holds NaN/Infinity;
- `model.pt` and `train.json` record the sha256 of the inputs read and the config slice used
  (`training_config`), which export, evaluate and register verify.

Checkpoints hold only tensors and plain values and load with `weights_only=True`: a file that needs more
(a crafted pickle) is refused, never executed (`textrnn.checkpoints`).

The core knows nothing of MLflow or Prefect: trackers plug in through the `on_epoch` callback.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from textrnn import checkpoints, lineage
from textrnn.bucketing import BucketBatchSampler, padding_efficiency
from textrnn.checkpoints import ResumePoint, save_model, save_torch, writing
from textrnn.config import Config, Variant
from textrnn.errors import TextrnnError
from textrnn.files import read_json, sha256_file, write_json
from textrnn.models import TextRNN, build_model
from textrnn.optim import SplitAdam, SplitSchedule, clip_grad_norm, make_optimizer, make_scheduler
from textrnn.runtime import progress_bar, resolve_device, seed_everything
from textrnn.tokens import EncodedSplit, load_tokenizer

log = logging.getLogger("textrnn")

EpochCallback = Callable[[str, dict[str, float]], None]
"""Called after every epoch with (variant name, that epoch's metrics)."""


class TrainingDiverged(TextrnnError):
    """A loss or gradient became NaN or infinite; nothing is published."""


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    samples_per_second: float
    padding_efficiency: float
    seconds: float


def batch_tensors(split: EncodedSplit, rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(token_ids [B, T], lengths [B], labels [B]) for the given rows, padded to the batch's longest."""
    token_ids = torch.from_numpy(split.texts.padded(rows)).to(device)
    lengths = torch.from_numpy(split.texts.lengths[rows]).to(device)
    labels = torch.from_numpy(split.labels[rows]).to(device)
    return token_ids, lengths, labels


def _autocast(device: torch.device):
    # bf16 on CUDA speeds up the embedding and cell matmuls; CPU stays in fp32 for bit-exact results.
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def predict_logits(model: TextRNN, split: EncodedSplit, batch_size: int, device: torch.device) -> np.ndarray:
    """Logits [rows, classes] in row order; rows are batched by length so little time goes to padding."""
    model.eval()
    order = np.argsort(split.texts.lengths, kind="stable")
    logits = np.zeros((len(split.labels), model.num_classes), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        token_ids, lengths, _ = batch_tensors(split, rows, device)
        with _autocast(device):
            logits[rows] = model(token_ids, lengths).float().cpu().numpy()
    return logits


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def _train_epoch(
    model: TextRNN,
    optimizer: SplitAdam,
    schedule: SplitSchedule | None,
    average: AveragedModel | None,
    loss_fn: nn.Module,
    split: EncodedSplit,
    sampler: BucketBatchSampler,
    cfg: Config,
    device: torch.device,
    progress,
    task,
    description: str,
) -> tuple[float, float, float, float]:
    """One pass over the train split, stepping `schedule` and `average` (if any) after each optimizer step; returns
    (loss, accuracy, samples/s, padding efficiency), the loss being `loss_fn`'s. Advances `task` of `progress`.

    Raises TrainingDiverged at the first step whose loss or gradient norm is not finite (before the
    optimizer applies it), naming `description` (variant and epoch) and the step."""
    model.train()
    parameters = list(model.parameters())
    batches = sampler.batches()
    total_loss = correct = seen = 0
    started = time.perf_counter()
    for step, rows in enumerate(batches, start=1):
        token_ids, lengths, labels = batch_tensors(split, rows, device)
        optimizer.zero_grad(set_to_none=True)
        logits, loss_value = backward_step(model, token_ids, lengths, labels, loss_fn, device)
        _check_finite("loss", loss_value, f"{description}, step {step}", cfg, EXPLODED_LOSS)
        grad_norm = float(clip_grad_norm(parameters, cfg.train.grad_clip))
        _check_finite("gradient norm", grad_norm, f"{description}, step {step}", cfg)
        optimizer.step()
        if schedule is not None:
            schedule.step()
        if average is not None:
            average.update_parameters(model)
        total_loss += loss_value * len(rows)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(rows)
        progress.update(task, advance=len(rows), rate=seen / (time.perf_counter() - started))
    seconds = time.perf_counter() - started
    return total_loss / seen, correct / seen, seen / seconds, padding_efficiency(split.texts.lengths, batches)


def backward_step(model: TextRNN, token_ids: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor,
                  loss_fn: nn.Module, device: torch.device) -> tuple[torch.Tensor, float]:
    """Accumulate one batch's gradients into the parameters; (logits, loss), both of the batch's first
    dropout draw, unperturbed.

    With the variant's `consistency` weight (R-Drop), the batch also goes through a second dropout draw: the
    loss is the two draws' mean plus the weight times the symmetric KL divergence of their predictions.
    With the variant's `adversarial` size, the loss on adversarial embeddings (FGM, Miyato et al. 2017) adds
    its gradients: each row's embeddings moved along the clean loss's gradient, by `adversarial` times the
    row's own embedding norm (a scale that follows the embeddings as they grow, where a fixed norm would
    not). Pads get no gradient (masked cells never read them), so they are not moved, and a row's move
    does not depend on how many pad columns its batch has."""
    size, weight = model.variant.adversarial, model.variant.consistency
    with _autocast(device):
        embedded = model.embed(token_ids, lengths)
        if size:
            embedded.retain_grad()
        logits = model.classify(embedded, lengths)
        loss = loss_fn(logits.float(), labels)
        total = loss
        if weight:
            second = model.classify(model.embed(token_ids, lengths), lengths).float()
            total = (loss + loss_fn(second, labels)) / 2 + weight * symmetric_kl(logits, second)
    total.backward(retain_graph=bool(size))
    if size:
        direction = embedded.grad.detach()
        direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1)
        scale = embedded.detach().flatten(1).norm(dim=1).view(-1, 1, 1)
        with _autocast(device):
            adversarial_loss = loss_fn(model.classify(embedded + size * scale * direction, lengths).float(), labels)
        adversarial_loss.backward()
    return logits, loss.item()


def symmetric_kl(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The mean over rows of (KL(p||q) + KL(q||p)) / 2 between the softmaxes of two logit batches."""
    log_p, log_q = first.float().log_softmax(-1), second.float().log_softmax(-1)
    kl = functools.partial(nn.functional.kl_div, reduction="batchmean", log_target=True)
    return (kl(log_q, log_p) + kl(log_p, log_q)) / 2


# A mean cross-entropy this large means logits thousands apart on wrong answers: the weights have blown
# up (e.g. train.learning_rate=1e30 keeps every value finite, at 1e30), so it stops training like a NaN.
EXPLODED_LOSS = 1e4


def _check_finite(what: str, value: float, where: str, cfg: Config, limit: float = math.inf) -> None:
    """Raise TrainingDiverged when `value` is NaN, infinite or above `limit`, naming `where`."""
    if not math.isfinite(value) or value > limit:
        state = f"{value:.3g}, above {limit:g}" if math.isfinite(value) else str(value)
        raise TrainingDiverged(
            f"training diverged: {where}: {what} is {state} (train.learning_rate="
            f"{cfg.train.learning_rate:g}, train.grad_clip={cfg.train.grad_clip:g}); no model.pt was written"
        )


# ------------------------------------------------------------------------------ inputs and outputs


def training_config(cfg: Config, variant: Variant) -> dict[str, Any]:
    """The config slice a training run depends on (JSON values): seed, train.* but device/threads,
    buckets.*, tokenizer.*, data.classes and the variant (with its name).

    Keys are named as in the MLflow run's params (`provenance.variant_params`), so register can compare them."""
    return {
        "seed": cfg.seed,
        "train": cfg.train.model_dump(mode="json", exclude={"device", "threads"}),
        "buckets": cfg.buckets.model_dump(mode="json"),
        "tokenizer": cfg.tokenizer.model_dump(mode="json"),
        "data": {"classes": list(cfg.data.classes)},
        "variant": {"name": variant.name, **variant.config.model_dump(mode="json")},
    }


def input_paths(cfg: Config) -> list[Path]:
    """The files training reads: the encoded train and val splits and the tokenizer."""
    return [cfg.paths.encoded_split("train"), cfg.paths.encoded_split("val"), cfg.paths.tokenizer]


def check_inputs(cfg: Config, variant: Variant) -> dict[str, Any]:
    """Verify that the encoded inputs are the ones encode's `lineage.json` recorded; return the lineage
    record (inputs' sha256 + `training_config`) for this run's outputs.

    Raises TextrnnError for a missing input, LineageError for a changed one (one line naming both files)."""
    for path in input_paths(cfg):
        if not path.is_file():
            raise TextrnnError(f"{path}: not found (run `textrnn encode` first)")
    record_file = cfg.paths.encoded_lineage
    if not record_file.is_file():
        raise lineage.LineageError(f"{record_file}: not found (made by an older textrnn?); re-run `textrnn encode`")
    try:
        recorded = read_json(record_file).get("outputs")
    except (ValueError, AttributeError):
        raise lineage.LineageError(f"{record_file}: not a lineage record; re-run `textrnn encode`") from None
    # The tokenizer lives in the encoded directory (published with the ids), so one record covers all three.
    lineage.verify_outputs(cfg.paths.encoded, recorded, record_file, only=[path.name for path in input_paths(cfg)])
    return lineage.record(input_paths(cfg), training_config(cfg, variant))


def variant_outputs(cfg: Config, variant: Variant, *, resume: bool = False, run_record: bool = True) -> list[Path]:
    """Every file textrnn writes for the variant from training on: model.pt, the export (model.onnx,
    export.json, tokenizer.json), train.json, eval.json and the plots; checkpoint.pt unless `resume`,
    `mlflow_run.json` when `run_record`."""
    paths = cfg.paths
    # model.pt, and what later steps make from it (export.py, evaluate.py): a new training run clears them all.
    path_of = [paths.model_file, paths.onnx_file, paths.export_report, paths.served_tokenizer, paths.export_failure,
               paths.train_report, paths.eval_report, paths.headline_metrics, paths.predictions_file,
               paths.confusion_matrix_plot, paths.learning_curves_plot]
    if not resume:
        path_of.append(paths.checkpoint)
    if run_record:
        path_of.append(paths.run_record)
    return [variant_path(variant.name) for variant_path in path_of]


def clear_outputs(cfg: Config, variant: Variant, *, resume: bool = False, run_record: bool = True) -> None:
    """Remove the variant's previous outputs (`variant_outputs`) before a new run writes any, so a run
    killed part-way leaves no older model under its own records. Only files textrnn names are removed."""
    for path in variant_outputs(cfg, variant, resume=resume, run_record=run_record):
        with writing(path, "remove"):
            path.unlink(missing_ok=True)


def check_resume(cfg: Config, variant: Variant, record: dict[str, Any]) -> ResumePoint | None:
    """The variant's checkpoint validated against `record` (see `ResumePoint.load`), or None without one."""
    path = cfg.paths.checkpoint(variant.name)
    return ResumePoint.load(path, record) if path.is_file() else None


def _plain_state(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached copy as a plain dict (what weights_only loads without allow-listing)."""
    return {key: value.detach().clone() for key, value in state_dict.items()}


def train_variant(
    cfg: Config,
    variant: Variant,
    *,
    resume: bool = False,
    on_epoch: EpochCallback | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Train `variant` on the encoded train split, early-stopping on val loss.

    Inputs are verified (`check_inputs`, and the checkpoint with `resume`) before the variant's previous
    outputs are cleared (`clear_outputs`, keeping `mlflow_run.json`, which is the caller's). With
    `resume`, continue from `checkpoint.pt` when it exists: the result equals an uninterrupted run bit
    for bit on CPU. Returns the summary also written to `metrics/<variant>/train.json`.

    Raises TrainingDiverged at the first non-finite loss or gradient, CheckpointError for an unusable or
    mismatched checkpoint, LineageError for changed inputs, OutputError when a file cannot be written.
    """
    record = check_inputs(cfg, variant)
    resume_point = check_resume(cfg, variant, record) if resume else None
    clear_outputs(cfg, variant, resume=resume, run_record=False)
    name = variant.name
    device = resolve_device(cfg.train.device)
    train_split = EncodedSplit.load(cfg.paths.encoded_split("train"))
    val_split = EncodedSplit.load(cfg.paths.encoded_split("val"))
    vocab_size = load_tokenizer(cfg.paths.tokenizer).get_vocab_size()
    # Initial weights come from torch's global generator, seeded here: each variant trains in a process
    # of its own (the Prefect flow's local fan-out included), so nothing else draws from it meanwhile.
    seed_everything(cfg.seed, cfg.train.threads)
    model = build_model(variant.config, vocab_size, len(cfg.data.classes)).to(device)
    options = variant.config
    sparse = cfg.train.sparse_embedding if options.sparse_embedding is None else options.sparse_embedding
    learning_rate = cfg.train.learning_rate if options.learning_rate is None else options.learning_rate
    optimizer = make_optimizer(model, learning_rate, sparse, options.weight_decay)
    sampler = BucketBatchSampler(
        train_split.texts.lengths, options.batch_size, cfg.seed, cfg.buckets.chunk_batches, cfg.buckets.token_budget,
        enabled=cfg.buckets.enabled,
    )
    schedule = _schedule(optimizer, sampler, cfg, variant)
    average = _weight_average(model, options.weight_average)
    evaluated = model if average is None else average.module  # what validation reads and training publishes
    # Smoothing shapes the training loss only: validation loss (early stopping) stays plain cross-entropy,
    # comparable across variants.
    loss_fn = nn.CrossEntropyLoss(label_smoothing=options.label_smoothing)

    state = {"epoch": 0, "history": [], "best_val_loss": float("inf"), "best_epoch": 0, "bad_epochs": 0,
             "best_state": _plain_state(model.state_dict()), "wall_seconds": 0.0}
    ckpt = cfg.paths.checkpoint(name)
    if resume_point is not None:
        state = resume_point.restore(model, optimizer, schedule, average)
        log.info("resume variant=%s after_epoch=%d", name, state["epoch"])

    with progress_bar(show_progress) as progress:
        while state["epoch"] < cfg.train.epochs and state["bad_epochs"] < cfg.train.patience:
            epoch = state["epoch"] + 1
            sampler.set_epoch(epoch)
            started = time.perf_counter()
            # Each epoch keeps its bar, and ends it with its validation figures: the run reads as a table.
            task = progress.add_task(f"{name} epoch {epoch}/{cfg.train.epochs}", total=len(train_split.labels),
                                     rate=0.0, result="")
            train_loss, train_acc, rate, efficiency = _train_epoch(
                model, optimizer, schedule, average, loss_fn, train_split, sampler, cfg, device, progress, task,
                f"{name} epoch {epoch}/{cfg.train.epochs}",
            )
            val_logits = predict_logits(evaluated, val_split, 256, device)
            metrics = EpochMetrics(
                epoch=epoch,
                train_loss=train_loss,
                train_accuracy=train_acc,
                val_loss=_cross_entropy(val_logits, val_split.labels),
                val_accuracy=float((val_logits.argmax(1) == val_split.labels).mean()),
                samples_per_second=rate,
                padding_efficiency=efficiency,
                seconds=time.perf_counter() - started,
            )
            _check_finite("validation loss", metrics.val_loss, f"{name} epoch {epoch}/{cfg.train.epochs}", cfg,
                          EXPLODED_LOSS)
            progress.update(task, result=f"val loss {metrics.val_loss:.4f}  val acc {metrics.val_accuracy:.4f}")
            state["epoch"] = epoch
            state["wall_seconds"] += metrics.seconds
            state["history"].append(asdict(metrics))
            if metrics.val_loss < state["best_val_loss"]:
                state.update(best_val_loss=metrics.val_loss, best_epoch=epoch, bad_epochs=0,
                             best_state=_plain_state(evaluated.state_dict()))
            else:
                state["bad_epochs"] += 1
            save_torch(
                {"format": checkpoints.CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "schedule": schedule.state_dict() if schedule is not None else None,
                 "average": average.state_dict() if average is not None else None,
                 "torch_rng": torch.get_rng_state(), "lineage": record, "state": state},
                ckpt,
            )
            log.info("epoch variant=%s %s", name, " ".join(f"{k}={v:.4g}" for k, v in asdict(metrics).items()))
            if on_epoch is not None:
                on_epoch(name, asdict(metrics))

    return _publish(cfg, variant, model, state, record, device)


def _weight_average(model: TextRNN, decay: float) -> AveragedModel | None:
    """An exponential moving average of `model`'s weights, updated after every optimizer step, or None for
    decay 0. It starts as a copy of the weights at the first step; nothing but its weights is averaged
    (the model has no buffers)."""
    if decay == 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))


def _schedule(optimizer: SplitAdam, sampler: BucketBatchSampler, cfg: Config, variant: Variant) -> SplitSchedule | None:
    """The variant's learning-rate schedule, or None when it has none (no warmup, constant: the optimizer is
    then exactly the lesson's, checkpoint included). Steps per epoch are the first epoch's batch count:
    exact without a token budget, and close with one (the cosine then ends at most a few steps off)."""
    options = variant.config
    if options.warmup_epochs == 0 and options.schedule == "constant":
        return None
    sampler.set_epoch(1)
    return make_scheduler(optimizer, steps_per_epoch=len(sampler), epochs=cfg.train.epochs,
                          warmup_epochs=options.warmup_epochs, schedule=options.schedule)


def _publish(cfg: Config, variant: Variant, model: TextRNN, state: dict[str, Any], record: dict[str, Any],
             device: torch.device) -> dict[str, Any]:
    """Write model.pt (best epoch's weights) and train.json, both with the lineage record; return the summary."""
    save_model(model, state["best_state"], cfg.data.classes, cfg.paths.model_file(variant.name), record)
    history = state["history"]
    summary = {
        "variant": variant.name,
        "config": variant.config.model_dump(),
        "device": device.type,
        "epochs_run": state["epoch"],
        "stopped_early": state["bad_epochs"] >= cfg.train.patience,
        "best_epoch": state["best_epoch"],
        "best_val_loss": state["best_val_loss"],
        "best_val_accuracy": history[state["best_epoch"] - 1]["val_accuracy"],
        "samples_per_second": float(np.mean([h["samples_per_second"] for h in history])),
        "padding_efficiency": float(np.mean([h["padding_efficiency"] for h in history])),
        "wall_seconds": state["wall_seconds"],
        "history": history,
        "model_pt_sha256": sha256_file(cfg.paths.model_file(variant.name)),
        "lineage": record,
    }
    report = cfg.paths.train_report(variant.name)
    with writing(report):
        write_json(report, summary)
    return summary
