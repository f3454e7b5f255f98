"""Where and how torch runs: device choice, seeds, threads, and the progress bar every long loop uses."""

from __future__ import annotations

import logging
import random

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from textrnn import terminal
from textrnn.errors import TextrnnError

log = logging.getLogger("textrnn")


def resolve_device(requested: str) -> torch.device:
    """`auto` is CUDA when present, else CPU; `cuda` without a GPU is an error, not a silent fallback."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise TextrnnError("train.device is 'cuda' but torch sees no CUDA device (use 'auto' or 'cpu')")
    return torch.device(requested)


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed python, numpy and torch; fix the CPU thread count when given (results depend on it)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads is not None:
        torch.set_num_threads(threads)


def progress_bar(show: bool) -> Progress:
    """A rich progress bar with a live samples/s column (fed through the task's `rate` field) and, once the
    task is done, what it ended with (its `result` field: an epoch's validation loss and accuracy)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>8.0f} samples/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[result]}"),
        console=terminal.console(),
        disable=not show,
        transient=False,
    )
