"""Training throughput per variant on CPU: length-bucketed vs random batches, sparse vs dense embedding updates.

Data: the real AG News rows in ../shared/data/ag_news/ when present (never copied into the repo), else the
embedded sample corpus. Each variant trains three ways from the same seed, `--epochs` epochs each: our
default (bucketed batches, sparse embedding updates), random batches, and bucketed with dense Adam on the
embedding table (`train.sparse_embedding=false`);
samples/s is train rows / train-loop seconds of the fastest epoch after the first (which also pays
one-time costs: thread pools, allocator growth). Writes bench/results/train_throughput.json
and prints a markdown table.

    .venv/bin/python bench/train_throughput.py [--epochs 1] [--threads 2] [--variants rnn,lstm,...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

import torch

from common import PARAMS, RESULTS, data_overrides, load_average, machine, run_overrides, short_name
from readme import bucketing_table
from textrnn import config
from textrnn.data import prepare
from textrnn.tokens import encode
from textrnn.train import train_variant



# name -> overrides of one training run; the first is our default, the others each change one thing.
RUNS = {
    "bucketed": ["buckets.enabled=true"],
    "random": ["buckets.enabled=false"],
    "dense_embedding": ["buckets.enabled=true", "train.sparse_embedding=false"],
}


def measure(variants: list[str], base: list[str]) -> list[dict]:
    """Per variant and run: samples/s and padding efficiency of the fastest epoch after the first, and the
    two speed-ups."""
    rows = []
    for variant in variants:
        result = {"variant": variant}
        for name, overrides in RUNS.items():
            cfg = config.load(PARAMS, [*base, *overrides])
            result["batch_size"] = cfg.variants[variant].batch_size
            # The fastest epoch after the first: the first pays one-time costs, and on a shared machine other
            # work only ever slows an epoch down.
            history = train_variant(cfg, cfg.variant(variant))["history"]
            best = max(history[1:] or history, key=lambda epoch: epoch["samples_per_second"])
            result[f"{name}_samples_per_second"] = best["samples_per_second"]
            result[f"{name}_padding_efficiency"] = best["padding_efficiency"]
            print(f"{variant} {name}: {best['samples_per_second']:.0f} samples/s", file=sys.stderr, flush=True)
        result["speedup"] = result["bucketed_samples_per_second"] / result["random_samples_per_second"]
        result["sparse_embedding_speedup"] = (result["bucketed_samples_per_second"]
                                              / result["dense_embedding_samples_per_second"])
        rows.append(result)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="")
    args = parser.parse_args()

    data_name, data_sets = data_overrides()
    load_start = load_average()
    # The directory holds prepared AG News text: it never outlives the run.
    with tempfile.TemporaryDirectory(prefix="textrnn-bench-") as workdir, contextlib.chdir(workdir):
        # Inside the run's directory: textrnn writes only inside its working directory.
        base = run_overrides(Path(workdir), data_sets, args.epochs, args.threads)
        cfg = config.load(PARAMS, base)
        rows_by_split = prepare(cfg)["rows"]
        encode(cfg)
        results = measure(args.variants.split(",") if args.variants else list(cfg.variants), base)

    report = {
        "benchmark": "train_throughput",
        "machine": machine(),
        "data": data_name, "data_short": short_name(data_name),
        "train_rows": rows_by_split["train"],
        "epochs": args.epochs,
        "threads": args.threads,
        "torch": torch.__version__,
        "load_average_1min": {"start": load_start, "end": load_average()},
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_throughput.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print("\n".join(bucketing_table(report)))


if __name__ == "__main__":
    main()
