"""Provenance of a run: the params that say what was learnt and the tags that say from what (git state,
data fingerprint, library versions, DVC experiment). Plain data from the config and the working
directory; `textrnn.tracking` logs it, and `register` compares a model's recorded config with it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textrnn import lineage
from textrnn.files import sha256_file

if TYPE_CHECKING:
    from textrnn.config import Config, Variant

DVC_EXP_ENV = "DVC_EXP_NAME"
SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"a": {"b": 1}}` -> `{"a.b": "1"}` (MLflow params are strings); lists become JSON so they stay one
    comparable param."""
    return {
        key: json.dumps(value) if isinstance(value, list) else str(value)
        for key, value in lineage.flat(mapping, prefix).items()
    }


def shared_params(cfg: Config) -> dict[str, str]:
    """Every config key that shapes a model except the variants: seed, data.*, tokenizer.*, buckets.*, train.*.

    Paths, tracking, registry and orchestration settings say where things go, not what is learnt.
    """
    raw = cfg.model_dump(mode="json", include={"seed", "data", "tokenizer", "buckets", "train"})
    return flatten(raw)


def variant_params(cfg: Config, variant: Variant) -> dict[str, str]:
    """The variant's full flattened config: `shared_params` plus `variant.name` and `variant.*`."""
    return {
        **shared_params(cfg),
        "variant.name": variant.name,
        **flatten(variant.config.model_dump(mode="json"), "variant."),
    }


# The checkout the running code comes from (an editable install or a worker's checkout): its commit is the
# code's, wherever the working directory is.
CODE_DIR = Path(__file__).resolve().parent


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", str(CODE_DIR), *args], capture_output=True, text=True, timeout=5,
                                check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_tags() -> dict[str, str]:
    """`git_commit` and `git_dirty` (tracked files changed) of the code that runs (`CODE_DIR`'s checkout);
    `unknown` when it is not in a git checkout (an installed wheel)."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": commit,
        "git_dirty": "unknown" if dirty is None else str(bool(dirty)).lower(),
        "mlflow.source.git.commit": commit,  # the UI's "Source" column
    }


def package_version(*names: str) -> str:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def split_digests(cfg: Config) -> dict[str, str]:
    """sha256 of each prepared split file (`data/prepared/<split>.parquet`) that exists."""
    digests = {}
    for split in SPLIT_CONTEXTS:
        path = cfg.paths.prepared_split(split)
        if path.is_file():
            digests[split] = sha256_file(path)
    return digests


def data_sha256(cfg: Config) -> str:
    """One fingerprint of the prepared data: sha256 over the splits' sha256s (`unknown` if none exist)."""
    digests = split_digests(cfg)
    if not digests:
        return "unknown"
    joined = "\n".join(f"{split}:{digest}" for split, digest in sorted(digests.items()))
    return hashlib.sha256(joined.encode()).hexdigest()


def config_sha256(cfg: Config) -> str:
    """One fingerprint of the resolved config: sha256 of its canonical JSON (keys sorted)."""
    return hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def run_tags(cfg: Config) -> dict[str, str]:
    """Tags every textrnn run carries: git state, data fingerprint, library versions, DVC experiment.
    (A variant run logs the params it read; the pipeline's run also carries `config_sha256`.)"""
    tags = {
        **git_tags(),
        "data_sha256": data_sha256(cfg),
        "data_source": cfg.data.source,
        "torch_version": package_version("torch"),
        "onnxruntime_version": package_version("onnxruntime-gpu", "onnxruntime"),
        "textrnn_version": package_version("textrnn"),
    }
    if os.environ.get(DVC_EXP_ENV):
        tags["dvc_exp_name"] = os.environ[DVC_EXP_ENV]
    return tags
