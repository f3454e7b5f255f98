"""Training throughput per variant on CPU: length-bucketed vs random batches.

Data: the real AG News rows in ../shared/data/ag_news/ when present (never copied into the repo), else the
embedded sample corpus. Each (variant, batching) pair trains for `--epochs` epochs from the same seed;
samples/s is the last epoch's train rows / train-loop seconds (the first epoch also pays one-time costs:
thread pools, allocator growth). Writes bench/results/train_throughput.json
and prints a markdown table.

    .venv/bin/python bench/train_throughput.py [--epochs 1] [--threads 2] [--variants rnn,lstm,...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from common import PARAMS, RESULTS, data_overrides, load_average, machine, run_overrides, short_name
from textrnn import config
from textrnn.data import prepare
from textrnn.tokens import encode
from textrnn.train import train_variant



def measure(variants: list[str], base: list[str]) -> list[dict]:
    """Per variant: samples/s and padding efficiency with bucketed and with random batches."""
    rows = []
    for variant in variants:
        result = {"variant": variant}
        for batching, enabled in (("bucketed", "true"), ("random", "false")):
            cfg = config.load(PARAMS, [*base, f"buckets.enabled={enabled}"])
            result["batch_size"] = cfg.variants[variant].batch_size
            last_epoch = train_variant(cfg, variant)["history"][-1]
            result[f"{batching}_samples_per_second"] = last_epoch["samples_per_second"]
            result[f"{batching}_padding_efficiency"] = last_epoch["padding_efficiency"]
            print(f"{variant} {batching}: {last_epoch['samples_per_second']:.0f} samples/s", file=sys.stderr, flush=True)
        result["speedup"] = result["bucketed_samples_per_second"] / result["random_samples_per_second"]
        rows.append(result)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="")
    args = parser.parse_args()

    data_name, data_sets = data_overrides()
    load_start = load_average()
    # The directory holds prepared AG News text: it never outlives the run.
    with tempfile.TemporaryDirectory(prefix="textrnn-bench-") as workdir:
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
    print(markdown_table(report))


def markdown_table(report: dict) -> str:
    lines = [
        f"Training samples/s on CPU ({report['machine']['cpu']}, {report['machine']['cores']} cores; "
        f"{report['threads']} threads), {report['data']}, {report['train_rows']} train rows, {report['epochs']} epoch(s), last epoch's rate, "
        f"torch {report['torch']}; load average {report['load_average_1min']['start']:.1f} at start, "
        f"{report['load_average_1min']['end']:.1f} at end:",
        "",
        "| variant | batch | bucketed samples/s | random samples/s | speed-up | padding eff. bucketed | padding eff. random |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['variant']} | {r['batch_size']} | {r['bucketed_samples_per_second']:.0f} | {r['random_samples_per_second']:.0f} "
            f"| {r['speedup']:.2f}x | {r['bucketed_padding_efficiency']:.3f} | {r['random_padding_efficiency']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
