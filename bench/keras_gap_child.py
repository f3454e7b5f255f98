"""The ablations of bench/keras_gap.py and what runs inside one of its child processes.

`FACTORS` names every step from our recipe towards the Keras lesson's; `child` trains one (model, variant,
seed) of ours with a variant's factors applied, by config override or by monkeypatching `textrnn.train`
(nothing under src/ changes), and writes its JSON report with the diagnostics. keras_gap.py launches it as
`keras_gap.py --child-model ...` in a fresh interpreter.

No torch at import time: the orchestrating process imports this for the factor names.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import PARAMS

FACTORS: dict[str, str] = {
    "single_bias": "one bias per cell, as Keras (bias_hh zeroed and frozen)",
    "no_clip": "no gradient-norm clipping (ours clips at 1.0)",
    "dense_adam": "dense Adam on the embedding (ours: lazy SparseAdam), train.sparse_embedding=false",
    "random_batches": "plain shuffled batches (ours: length-bucketed), buckets.enabled=false",
    "pad_row": "embedding row 0 random and trainable, as Keras' mask_zero (ours: padding_idx=0, zero, frozen)",
    "adam_eps": "Adam epsilon 1e-7, Keras' default (torch: 1e-8)",
}
DEFAULT_VARIANTS = ["ours", *FACTORS, "keras_all"]
FREQUENCY_BANDS = [(0, 0), (1, 1), (2, 4), (5, 19), (20, None)]


def source_sha256(package: Path) -> str:
    """One sha256 over the package's .py files (names and contents, sorted)."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def factors_of(variant: str) -> list[str]:
    """The factors of a variant name: `ours`, `keras_all`, or factor names joined with `+`."""
    if variant == "ours":
        return []
    if variant == "keras_all":
        return list(FACTORS)
    names = variant.split("+")
    unknown = [name for name in names if name not in FACTORS]
    if unknown:
        raise SystemExit(f"unknown factor(s) {', '.join(unknown)} in {variant!r} (factors: {', '.join(FACTORS)})")
    return names


def child(args: argparse.Namespace) -> None:
    """Train one (model, variant, seed) of ours with the variant's factors applied; write a JSON report."""
    import torch

    import textrnn.train as train_module
    from textrnn import config
    from textrnn.tokens import EncodedSplit

    factors = factors_of(args.child_variant)
    overrides = [*json.loads(args.child_overrides), f"seed={args.child_seed}", f"train.threads={args.threads}"]
    if "dense_adam" in factors:
        overrides.append("train.sparse_embedding=false")
    if "random_batches" in factors:
        overrides.append("buckets.enabled=false")
    cfg = config.load(PARAMS, overrides)
    seen: dict[str, Any] = {"grad_norms": []}

    original_build, original_optimizer = train_module.build_model, train_module.make_optimizer
    original_clip, original_publish = train_module.clip_grad_norm, train_module._publish

    def build_model(*positional, **named):
        model = original_build(*positional, **named)
        if "single_bias" in factors:
            for name, parameter in model.named_parameters():
                if ".bias_hh_" in f".{name.rsplit('.', 1)[-1]}":
                    with torch.no_grad():
                        parameter.zero_()
                    parameter.requires_grad_(False)
        if "pad_row" in factors:
            model.embedding.padding_idx = None
            # A generator of its own: every other initial weight stays what `ours` draws.
            generator = torch.Generator().manual_seed(args.child_seed)
            with torch.no_grad():
                model.embedding.weight[0].copy_(torch.rand(model.embedding.embedding_dim, generator=generator) * 0.1 - 0.05)
        seen["initial_embedding"] = model.embedding.weight.detach().clone()
        return model

    def make_optimizer(*positional, **named):
        optimizer = original_optimizer(*positional, **named)
        if "adam_eps" in factors:
            for inner in optimizer.optimizers.values():
                for group in inner.param_groups:
                    group["eps"] = 1e-7
        seen["optimizers"] = {name: type(inner).__name__ for name, inner in optimizer.optimizers.items()}
        return optimizer

    def clip_grad_norm(parameters, max_norm, *positional, **named):
        norm = original_clip(parameters, math.inf if "no_clip" in factors else max_norm, *positional, **named)
        seen["grad_norms"].append(float(norm))
        return norm

    def publish(*positional, **named):
        seen["model"] = positional[2]  # _publish(cfg, variant, model, ...): the last epoch's weights
        return original_publish(*positional, **named)

    train_module.build_model, train_module.make_optimizer = build_model, make_optimizer
    train_module.clip_grad_norm, train_module._publish = clip_grad_norm, publish
    started = time.perf_counter()
    # train_variant takes the resolved `Variant` (name, config); older textrnn took the name.
    resolved = cfg.variant(args.child_model)
    summary = train_module.train_variant(cfg, resolved if hasattr(resolved, "name") else args.child_model)
    seconds = time.perf_counter() - started

    train_split = EncodedSplit.load(cfg.paths.encoded_split("train"))
    report = {
        "model": args.child_model, "variant": args.child_variant, "factors": factors, "seed": args.child_seed,
        "val_accuracy": summary["history"][-1]["val_accuracy"], "history": summary["history"],
        "train_seconds": seconds, "torch_threads": torch.get_num_threads(), "optimizers": seen["optimizers"],
        "textrnn_source": {"path": str(Path(train_module.__file__).parent), "sha256": source_sha256(Path(train_module.__file__).parent)},
        "diagnostics": diagnostics(seen, train_split, cfg.train.grad_clip),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def diagnostics(seen: dict[str, Any], train_split, grad_clip: float) -> dict[str, Any]:
    """Gradient-norm figures, embedding movement by token frequency, and the cells' effective bias."""
    import torch

    norms = np.array(seen["grad_norms"])
    model = seen["model"]
    moved = (model.embedding.weight.detach() - seen["initial_embedding"]).norm(dim=1).numpy()
    counts = np.bincount(train_split.texts.token_ids, minlength=len(moved))[: len(moved)]
    bands = {}
    for low, high in FREQUENCY_BANDS:
        rows = (counts >= low) & (counts <= (high if high is not None else counts.max()))
        rows[0] = False  # the pad row is reported on its own
        label = f"{low}" if low == high else (f"{low}+" if high is None else f"{low}-{high}")
        bands[label] = {"rows": int(rows.sum()), "mean_l2_moved": float(moved[rows].mean()) if rows.any() else None}
    biases = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.RNNBase):
            total = (module.bias_ih_l0 + module.bias_hh_l0).detach()
            biases[name] = {"effective_bias_abs_mean": float(total.abs().mean()),
                            "bias_hh_abs_mean": float(module.bias_hh_l0.detach().abs().mean())}
    return {
        "steps": len(norms), "grad_norm_median": float(np.median(norms)), "grad_norm_p90": float(np.quantile(norms, 0.9)),
        f"share_of_steps_above_{grad_clip:g}": float((norms > grad_clip).mean()),
        "embedding_l2_moved_by_train_count": bands, "pad_row_l2_moved": float(moved[0]), "cells": biases,
    }
