"""Concurrency: the pipeline's wall time at max_concurrency 1 vs 2, and training under a competing CPU load.

1. `textrnn pipeline` (Prefect, tracking off) over `--variants`, in a fresh directory each time, with
   `orchestration.max_concurrency` 1 and then 2. Locally every variant runs in a process of its own with
   `train.threads` torch threads (1 as shipped), so two variants at once on two cores use both.
2. One variant's training samples/s on an idle machine and beside a competing load (`--load` processes that
   spin on the CPU, started after the data are encoded): ours as shipped (`train.threads` 1), ours with
   `--threads` intra-op threads (torch's default is every core), and the Keras lesson model
   (bench/peer_keras.py, when TensorFlow is installed: `make bench` installs it) with every core, its
   default. The figure that matters is each one's loaded / idle ratio.

Writes bench/results/concurrency.json and prints a summary.

    .venv/bin/python bench/concurrency.py [--variants lstm,gru,rnn_masked,bag] [--epochs 2] [--load 1]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from common import PARAMS, QUIET_ENV, RESULTS, data_overrides, load_average, machine, run_overrides
from textrnn import config
from textrnn.data import prepare
from textrnn.tokens import encode
from textrnn.train import train_variant

BIN = Path(sys.executable).parent


def _spin() -> None:
    while True:
        pass


@contextlib.contextmanager
def cpu_load(processes: int) -> Iterator[None]:
    """`processes` busy loops for the block's duration: other work on the machine."""
    burners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(processes)]
    for burner in burners:
        burner.start()
    try:
        yield
    finally:
        for burner in burners:
            burner.terminate()
            burner.join()


def pipeline_seconds(variants: list[str], data_sets: list[str], epochs: int, concurrency: int) -> float:
    """Wall seconds of `textrnn pipeline` in a fresh directory at `orchestration.max_concurrency`."""
    with tempfile.TemporaryDirectory(prefix="textrnn-concurrency-") as workdir:
        # train.threads as shipped (what a user gets)
        sets = [*run_overrides(Path(workdir), data_sets, epochs, 1), f"orchestration.max_concurrency={concurrency}"]
        sets = [item for item in sets if not item.startswith("train.threads=")]
        (Path(workdir) / "params.yaml").write_text(PARAMS.read_text(encoding="utf-8"), encoding="utf-8")
        argv = [str(BIN / "textrnn"), "pipeline", "--variants", ",".join(variants),
                *[arg for item in sets for arg in ("--set", item)]]
        env = {**os.environ, **QUIET_ENV, "PREFECT_HOME": str(Path(workdir) / ".prefect")}
        started = time.perf_counter()
        subprocess.run(argv, cwd=workdir, env=env, check=True, capture_output=True, timeout=3600)
        return time.perf_counter() - started


def ours_samples_per_second(base: list[str], variant: str, threads: int | None) -> float:
    """Mean training samples/s of the epochs after the first, with `threads` (None: as shipped)."""
    sets = [item for item in base if not item.startswith("train.threads=")]
    cfg = config.load(PARAMS, [*sets, *([f"train.threads={threads}"] if threads else [])])
    history = train_variant(cfg, cfg.variant(variant))["history"]
    later = history[1:] or history
    return sum(epoch["samples_per_second"] for epoch in later) / len(later)


def keras_samples_per_second(encoded: Path, vocab_size: int, variant: str, epochs: int, out: Path) -> float | None:
    """The Keras lesson model's mean training samples/s (None without TensorFlow)."""
    if importlib.util.find_spec("tensorflow") is None:
        return None
    threads = str(os.cpu_count() or 1)  # the peer's default here: every core
    subprocess.run([sys.executable, str(Path(__file__).parent / "peer_keras.py"), "--variant", variant,
                    "--encoded", str(encoded), "--vocab-size", str(vocab_size), "--epochs", str(epochs),
                    "--threads", threads, "--no-inference", "--out", str(out)],
                   check=True, capture_output=True, env={**os.environ, **QUIET_ENV}, timeout=3600)
    return json.loads(out.read_text(encoding="utf-8"))["samples_per_second"]


def under_load(variant: str, data_sets: list[str], epochs: int, load: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="textrnn-load-") as workdir, contextlib.chdir(workdir):
        base = run_overrides(Path(workdir), data_sets, epochs, 1)
        cfg = config.load(PARAMS, base)
        prepare(cfg)
        vocab = encode(cfg)["vocab_size"]
        figures = {}
        for condition, burners in (("idle", 0), ("loaded", load)):
            with cpu_load(burners):
                figures[f"ours_{condition}"] = ours_samples_per_second(base, variant, None)
                figures[f"ours_{threads}_threads_{condition}"] = ours_samples_per_second(base, variant, threads)
                figures[f"keras_{condition}"] = keras_samples_per_second(
                    cfg.paths.encoded, vocab, variant, epochs, Path(workdir) / f"peer-{condition}.json")
            print(f"{variant} {condition}: ours {figures[f'ours_{condition}']:.0f} samples/s, keras "
                  f"{figures[f'keras_{condition}'] or float('nan'):.0f}", file=sys.stderr, flush=True)
    for side in ("ours", f"ours_{threads}_threads", "keras"):
        if figures[f"{side}_idle"] and figures[f"{side}_loaded"]:
            figures[f"{side}_loaded_over_idle"] = figures[f"{side}_loaded"] / figures[f"{side}_idle"]
    return {"variant": variant, "competing_processes": load, "threads": threads, **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="lstm,gru,rnn_masked,bag")
    parser.add_argument("--load-variants", default="lstm,bilstm")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--load", type=int, default=1, help="competing busy processes")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ours' intra-op threads to compare")
    parser.add_argument("--skip-pipeline", action="store_true")
    args = parser.parse_args()

    data_name, data_sets = data_overrides()
    load_start = load_average()
    variants = args.variants.split(",")
    report = {"benchmark": "concurrency", "machine": machine(), "data": data_name, "epochs": args.epochs,
              "variants": variants}
    if not args.skip_pipeline:
        seconds = {k: pipeline_seconds(variants, data_sets, args.epochs, k) for k in (1, 2)}
        report["pipeline"] = {"seconds_concurrency_1": seconds[1], "seconds_concurrency_2": seconds[2],
                              "speedup": seconds[1] / seconds[2]}
        print(f"pipeline: {seconds[1]:.0f} s at 1, {seconds[2]:.0f} s at 2", file=sys.stderr, flush=True)
    report["under_load"] = [under_load(variant, data_sets, args.epochs, args.load, args.threads)
                            for variant in args.load_variants.split(",")]
    report["load_average_1min"] = {"start": load_start, "end": load_average()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "concurrency.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(yaml.safe_dump(report, sort_keys=False))


if __name__ == "__main__":
    main()
