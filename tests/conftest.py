"""Shared fixtures: configs rooted in a temporary workspace, and a small prepared + encoded sample corpus.

Tests never touch the repository's own data/, models/ or mlflow.db: every path points under tmp, and
every test runs with its working directory there too (textrnn refuses outputs outside the working
directory, and records its inputs relative to it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from textrnn import config
from textrnn.config import Config

REPO_ROOT = Path(__file__).resolve().parent.parent
PARAMS = REPO_ROOT / "params.yaml"

# Libraries we drive stay quiet and offline in tests.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect keeps its database and profiles in PREFECT_HOME: a private one per test session, never ~/.prefect.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="textrnn-prefect-home-"))


def path_overrides(workdir: Path) -> list[str]:
    """`--set` overrides that put every output of the pipeline under `workdir`."""
    defaults = config.PathsConfig()
    return [f"paths.{name}={workdir / getattr(defaults, name)}" for name in config.PathsConfig.model_fields]


# A tiny architecture for model-level tests; a variant's architecture is always stated (config.py).
SMALL_ARCHITECTURE = {"embed_dim": 8, "hidden": 5, "layers": 1, "bidirectional": False, "masked": True, "batch_size": 4}


def small_variant(**fields) -> config.VariantConfig:
    """`SMALL_ARCHITECTURE` with `fields` (the cell at least) over it."""
    return config.VariantConfig(**{**SMALL_ARCHITECTURE, **fields})


SMALL_SAMPLE = [
    "data.source=sample",
    "data.sample.train_rows=3000",
    "data.sample.test_rows=400",
    "tracking.enabled=false",
    "train.epochs=2",
    "train.threads=1",
]


def make_config(workdir: Path, *overrides: str) -> Config:
    """params.yaml + the small sample settings + `overrides`, with every path under `workdir`.

    Paths are absolute and checked against `workdir` (as if it were the working directory), so the
    config is valid from any working directory, e.g. in a module-scoped fixture."""
    with contextlib.chdir(workdir):
        return config.load(PARAMS, [*SMALL_SAMPLE, *path_overrides(workdir), *overrides])


@pytest.fixture(autouse=True)
def _work_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs in its own tmp_path: outputs must lie inside the working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def encoded_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace whose sample corpus is prepared and encoded once per session (read-only for tests).
    Made with the workspace as working directory, as a user would."""
    from textrnn.data import prepare
    from textrnn.tokens import encode

    workdir = tmp_path_factory.mktemp("encoded-sample")
    with contextlib.chdir(workdir):
        cfg = make_config(workdir)
        prepare(cfg)
        encode(cfg)
    return workdir


def private_copy(workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of a shared (session- or module-scoped) workspace as `tmp_path/ws`, which becomes the test's
    working directory: the test may write into it freely."""
    target = tmp_path / "ws"
    shutil.copytree(workdir, target)
    monkeypatch.chdir(target)
    return target


@pytest.fixture
def workspace(encoded_sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the encoded sample workspace, free to train into; the test runs inside it."""
    return private_copy(encoded_sample, tmp_path, monkeypatch)
