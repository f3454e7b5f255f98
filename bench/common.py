"""What every benchmark shares: where the data is, the config overrides of a throwaway run, the machine's
description, and the timing and memory probes both sides of a comparison use.

No torch here: `peer_keras.py` imports this in a process that must not pay for importing torch, so the
figures of its memory stay the peer's own.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from textrnn.tokens import EncodedTexts

REPO = Path(__file__).resolve().parent.parent
PARAMS = REPO / "params.yaml"
RESULTS = REPO / "bench" / "results"
# Real AG News rows under a non-commercial licence: read in place, never copied into the repo.
AG_NEWS = REPO.parent / "shared" / "data" / "ag_news" / "train_head_10429.csv"
# Every path textrnn writes, pointed into a throwaway directory so a benchmark never touches the checkout.
PATH_KEYS = ("prepared", "encoded", "models", "metrics", "plots", "cache")
# Quiet, offline libraries in every process a benchmark starts (the Makefile exports the same).
QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "ORT_DISABLE_TELEMETRY": "1", "DVC_NO_ANALYTICS": "1",
             "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_DISABLE_TELEMETRY": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}

Inputs = list[tuple[np.ndarray, np.ndarray]]  # (token_ids int64 [B, T], lengths int64 [B]) per call
Runner = Callable[[np.ndarray, np.ndarray], object]


# ------------------------------------------------------------------------------------------------- data


def data_overrides(choice: str = "auto", sample_rows: int = 4000) -> tuple[str, list[str]]:
    """(description, config overrides) of the data a benchmark reads: the shared AG News rows when present
    (`auto`) or demanded (`ag_news`), else the embedded sample corpus."""
    if choice in ("auto", "ag_news") and AG_NEWS.is_file():
        # The file is the train source (a stratified 10% becomes val) and also the test source, whose rows
        # only feed inference timings, never an accuracy.
        return (f"AG News, {AG_NEWS.name} (the head of the official train split; stratified 90/10 train/val)",
                ["data.source=csv", f"data.train_path={AG_NEWS}", f"data.test_path={AG_NEWS}"])
    if choice == "ag_news":
        raise SystemExit(f"{AG_NEWS}: not found (use --data sample)")
    return (f"textrnn sample corpus ({sample_rows} train rows, stratified 90/10 train/val)",
            ["data.source=sample", f"data.sample.train_rows={sample_rows}"])


def run_overrides(workdir: Path, data_sets: list[str], epochs: int, threads: int) -> list[str]:
    """Overrides of one benchmark run of ours: data, every path under `workdir`, no tracking, CPU, and
    exactly `epochs` epochs (patience above the epoch count: no early stop)."""
    paths = [f"paths.{name}={workdir / name}" for name in PATH_KEYS]
    return [*data_sets, *paths, "tracking.enabled=false", f"train.epochs={epochs}", f"train.patience={epochs + 1}",
            f"train.threads={threads}", "train.device=cpu"]


def short_name(data_description: str) -> str:
    return "AG News" if data_description.startswith("AG News") else "sample corpus"


# ---------------------------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    """What the figures ran on: CPU model, cores, memory, Python and OS."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or platform.machine())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "os": platform.platform()}


def load_average() -> float:
    """The 1-minute load average: how much other work shared the CPUs with a measurement."""
    return os.getloadavg()[0]


def peak_rss_mb() -> dict[str, float]:
    """This process's resident memory now and its high-water mark, in MiB (Linux /proc)."""
    fields = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024  # reported in kB
    return {"rss_mb": fields["VmRSS"], "peak_rss_mb": fields["VmHWM"]}


# ---------------------------------------------------------------------------------------------- timing


def inference_inputs(texts: EncodedTexts, seed: int, b1_texts: int, batch: int, batches: int
                     ) -> tuple[Inputs, Inputs]:
    """(single rows, batches) of encoded texts, as the inputs every runtime is timed on.

    Single rows are unpadded; each batch is `batch` random rows padded to its own longest row (no length
    sorting: the same worst case for every runtime). A pure function of `seed`, so two processes build
    identical inputs.
    """
    rng = np.random.default_rng(seed)

    def rows_of(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return texts.padded(rows), np.ascontiguousarray(texts.lengths[rows])

    singles = [rows_of(np.array([row])) for row in rng.choice(len(texts), b1_texts, replace=False)]
    picks = [rng.choice(len(texts), batch, replace=len(texts) < batch) for _ in range(batches)]
    return singles, [rows_of(rows) for rows in picks]


def time_calls(run: Runner, inputs: Inputs, warmup: int = 3) -> list[float]:
    """Seconds per call of `run(token_ids, lengths)` for each input, after `warmup` untimed calls."""
    for token_ids, lengths in inputs[:warmup]:
        run(token_ids, lengths)
    timings = []
    for token_ids, lengths in inputs:
        started = time.perf_counter()
        run(token_ids, lengths)
        timings.append(time.perf_counter() - started)
    return timings


def b1_latency_ms(run: Runner, singles: Inputs) -> float:
    """Median milliseconds of one call on one row, over the single-row inputs."""
    return statistics.median(time_calls(run, singles)) * 1000


def batch_throughput(run: Runner, batches: Inputs, repeats: int) -> float:
    """Texts per second over the batches, best of `repeats` passes (noise only ever slows a pass down)."""
    rows = sum(len(lengths) for _, lengths in batches)
    return rows / min(sum(time_calls(run, batches, warmup=1)) for _ in range(repeats))
