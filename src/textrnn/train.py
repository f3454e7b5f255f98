"""Fit one variant: bucketed batches, Adam, gradient clipping, early stopping, resumable checkpoints.

Outputs, under the config's paths:
- `models/<variant>/model.pt`: the best epoch's weights with the variant config, vocabulary size and
  class names, enough to rebuild the model with no other file (`load_model`);
- `models/<variant>/checkpoint.pt`: everything needed to continue after the last finished epoch;
- `metrics/<variant>/train.json`: per-epoch loss/accuracy for train and val, throughput, padding.

The core knows nothing of MLflow or Prefect: trackers plug in through the `on_epoch` callback.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from textrnn.bucketing import BucketBatchSampler, padding_efficiency
from textrnn.config import Config, VariantConfig
from textrnn.errors import TextrnnError
from textrnn.files import atomic_path, write_json
from textrnn.models import TextRNN, build_model
from textrnn.optim import SplitAdam, clip_grad_norm, make_optimizer
from textrnn.runtime import progress_bar, resolve_device, seed_everything
from textrnn.tokens import EncodedSplit, load_tokenizer, split_path

log = logging.getLogger("textrnn")

_INIT_LOCK = threading.Lock()

EpochCallback = Callable[[str, dict[str, float]], None]
"""Called after every epoch with (variant name, that epoch's metrics)."""


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
    split: EncodedSplit,
    sampler: BucketBatchSampler,
    cfg: Config,
    device: torch.device,
    progress,
    description: str,
) -> tuple[float, float, float, float]:
    """One pass over the train split; returns (loss, accuracy, samples/s, padding efficiency)."""
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    parameters = list(model.parameters())
    batches = sampler.batches()
    task = progress.add_task(description, total=len(split.labels), rate=0.0)
    total_loss = correct = seen = 0
    started = time.perf_counter()
    for rows in batches:
        token_ids, lengths, labels = batch_tensors(split, rows, device)
        with _autocast(device):
            logits = model(token_ids, lengths)
            loss = loss_fn(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm(parameters, cfg.train.grad_clip)
        optimizer.step()
        total_loss += loss.item() * len(rows)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(rows)
        progress.update(task, advance=len(rows), rate=seen / (time.perf_counter() - started))
    seconds = time.perf_counter() - started
    progress.remove_task(task)
    return total_loss / seen, correct / seen, seen / seconds, padding_efficiency(split.texts.lengths, batches)


def checkpoint_path(cfg: Config, variant_name: str) -> Path:
    return cfg.paths.model_dir(variant_name) / "checkpoint.pt"


def model_path(cfg: Config, variant_name: str) -> Path:
    return cfg.paths.model_dir(variant_name) / "model.pt"


def _save_torch(payload: dict[str, Any], path: Path) -> None:
    # Through a file object: torch.save names the zip archive after a path it is given, and the temporary
    # name would make two identical models differ byte for byte.
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)


def save_model(model: TextRNN, state_dict: dict[str, torch.Tensor], classes: tuple[str, ...], path: Path) -> None:
    _save_torch(
        {
            "state_dict": state_dict,
            "variant": model.variant.model_dump(),
            "vocab_size": model.vocab_size,
            "classes": list(classes),
        },
        path,
    )


def load_model(path: Path | str, device: torch.device | str = "cpu") -> tuple[TextRNN, list[str]]:
    """Rebuild a trained model from its `model.pt` alone; returns (model in eval mode, class names)."""
    path = Path(path)
    if not path.is_file():
        raise TextrnnError(f"{path}: model not found (run `textrnn train` first)")
    payload = torch.load(path, map_location=device, weights_only=True)
    model = build_model(VariantConfig(**payload["variant"]), payload["vocab_size"], len(payload["classes"]))
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), payload["classes"]


def train_variant(
    cfg: Config,
    variant_name: str,
    *,
    resume: bool = False,
    on_epoch: EpochCallback | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Train `variant_name` on the encoded train split, early-stopping on val loss.

    With `resume`, continue from `checkpoint.pt` when it exists: the result equals an uninterrupted run
    bit for bit on CPU. Returns the summary also written to `metrics/<variant>/train.json`.
    """
    variant = cfg.variant(variant_name)
    device = resolve_device(cfg.train.device)
    train_split = EncodedSplit.load(split_path(cfg.paths.encoded, "train"))
    val_split = EncodedSplit.load(split_path(cfg.paths.encoded, "val"))
    vocab_size = load_tokenizer(cfg.paths.tokenizer).get_vocab_size()
    # Initial weights come from torch's global generator. Variants trained side by side in threads (the
    # Prefect flow's local mode) would interleave their draws, so seeding and building are one critical
    # section on a forked generator: a variant gets the same weights alone or next to others.
    with _INIT_LOCK, torch.random.fork_rng():
        seed_everything(cfg.seed, cfg.train.threads)
        model = build_model(variant, vocab_size, len(cfg.data.classes)).to(device)
    optimizer = make_optimizer(model, cfg.train.learning_rate, cfg.train.sparse_embedding)
    sampler = BucketBatchSampler(
        train_split.texts.lengths, variant.batch_size, cfg.seed, cfg.buckets.chunk_batches, cfg.buckets.token_budget,
        enabled=cfg.buckets.enabled,
    )

    state = {"epoch": 0, "history": [], "best_val_loss": float("inf"), "best_epoch": 0, "bad_epochs": 0,
             "best_state": copy.deepcopy(model.state_dict()), "wall_seconds": 0.0}
    ckpt = checkpoint_path(cfg, variant_name)
    if resume and ckpt.is_file():
        saved = torch.load(ckpt, map_location=device, weights_only=False)
        if (saved["variant"] != variant.model_dump() or saved["vocab_size"] != vocab_size
                or saved.get("sparse_embedding") != cfg.train.sparse_embedding):
            raise TextrnnError(f"{ckpt}: checkpoint is for another config of '{variant_name}'; train without --resume")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["torch_rng"])
        state = saved["state"]
        log.info("resume variant=%s after_epoch=%d", variant_name, state["epoch"])

    with progress_bar(show_progress) as progress:
        while state["epoch"] < cfg.train.epochs and state["bad_epochs"] < cfg.train.patience:
            epoch = state["epoch"] + 1
            sampler.set_epoch(epoch)
            started = time.perf_counter()
            train_loss, train_acc, rate, efficiency = _train_epoch(
                model, optimizer, train_split, sampler, cfg, device, progress,
                f"{variant_name} epoch {epoch}/{cfg.train.epochs}",
            )
            val_logits = predict_logits(model, val_split, 256, device)
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
            state["epoch"] = epoch
            state["wall_seconds"] += metrics.seconds
            state["history"].append(asdict(metrics))
            if metrics.val_loss < state["best_val_loss"]:
                state.update(best_val_loss=metrics.val_loss, best_epoch=epoch, bad_epochs=0,
                             best_state=copy.deepcopy(model.state_dict()))
            else:
                state["bad_epochs"] += 1
            _save_torch(
                {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                 "variant": variant.model_dump(), "vocab_size": vocab_size,
                 "sparse_embedding": cfg.train.sparse_embedding, "state": state},
                ckpt,
            )
            log.info("epoch variant=%s %s", variant_name, " ".join(f"{k}={v:.4g}" for k, v in asdict(metrics).items()))
            if on_epoch is not None:
                on_epoch(variant_name, asdict(metrics))

    save_model(model, state["best_state"], cfg.data.classes, model_path(cfg, variant_name))
    history = state["history"]
    summary = {
        "variant": variant_name,
        "config": variant.model_dump(),
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
    }
    write_json(cfg.paths.metrics_dir(variant_name) / "train.json", summary)
    return summary
