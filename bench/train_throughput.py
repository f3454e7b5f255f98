"""Training throughput per variant on CPU: length-bucketed vs random batches.

Data: the real AG News rows in ../shared/data/ag_news/ when present (never copied into the repo), else the
embedded sample corpus. Each (variant, batching) pair trains for `--epochs` epochs from the same seed;
samples/s is the mean over epochs of train rows / train-loop seconds. Writes bench/results/train_throughput.json
and prints a markdown table.

    .venv/bin/python bench/train_throughput.py [--epochs 1] [--threads 2] [--variants rnn,lstm,...]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

from textrnn import config
from textrnn.data import prepare
from textrnn.tokens import encode
from textrnn.train import train_variant

REPO_ROOT = Path(__file__).resolve().parent.parent
AG_NEWS = REPO_ROOT.parent / "shared" / "data" / "ag_news" / "train_head_10429.csv"
RESULTS = REPO_ROOT / "bench" / "results"


def data_overrides() -> tuple[str, list[str]]:
    """The data source the bench reads: shared AG News rows when present, else the sample corpus."""
    if AG_NEWS.is_file():
        # The same file serves as train and test source: only training throughput is measured here.
        return f"AG News, {AG_NEWS.name}", ["data.source=csv", f"data.train_path={AG_NEWS}", f"data.test_path={AG_NEWS}"]
    return "sample corpus (AG News rows absent)", ["data.source=sample"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="")
    args = parser.parse_args()

    data_name, data_sets = data_overrides()
    workdir = Path(tempfile.mkdtemp(prefix="textrnn-bench-"))
    paths = [f"paths.{name}={workdir / name}" for name in ("prepared", "encoded", "artifacts", "models", "metrics", "plots", "cache")]
    base = [*data_sets, *paths, "tracking.enabled=false", f"train.epochs={args.epochs}", "train.patience=100",
            f"train.threads={args.threads}", "train.device=cpu"]
    cfg = config.load(REPO_ROOT / "params.yaml", base)
    prepare(cfg)
    encode(cfg)
    variants = args.variants.split(",") if args.variants else list(cfg.variants)

    rows = []
    for variant in variants:
        result = {"variant": variant, "batch_size": cfg.variants[variant].batch_size}
        for batching, enabled in (("bucketed", "true"), ("random", "false")):
            run_cfg = config.load(REPO_ROOT / "params.yaml", [*base, f"buckets.enabled={enabled}"])
            summary = train_variant(run_cfg, variant)
            result[f"{batching}_samples_per_second"] = summary["samples_per_second"]
            result[f"{batching}_padding_efficiency"] = summary["padding_efficiency"]
            print(f"{variant} {batching}: {summary['samples_per_second']:.0f} samples/s", file=sys.stderr, flush=True)
        result["speedup"] = result["bucketed_samples_per_second"] / result["random_samples_per_second"]
        rows.append(result)

    report = {
        "benchmark": "train_throughput",
        "data": data_name,
        "train_rows": int(json.loads((cfg.paths.prepared / "report.json").read_text())["rows"]["train"]),
        "epochs": args.epochs,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.processor() or 'cpu'}",
        "results": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown_table(report))


def markdown_table(report: dict) -> str:
    lines = [
        f"Training samples/s on CPU ({report['threads']} threads), {report['data']}, {report['train_rows']} train rows, "
        f"{report['epochs']} epoch(s), torch {report['torch']}:",
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
