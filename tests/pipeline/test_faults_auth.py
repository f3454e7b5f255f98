"""Secrets never enter an image (issue 12, item 12): every image that infra/docker-compose.yml builds is checked
with Docker's own .dockerignore matcher (docker-py's `exclude_paths`, a port of the engine's pattern rules) over
a build context that holds this checkout's files plus every kind of secret and local state a developer's checkout
has: `.dvc/config.local` (the DVC remote's key, where infra/README.md puts it), `.env` files (infra/.env holds
the stack's passwords), Prefect profiles, MLflow stores, data and models.

That the servers refuse clients without credentials is checked on the real stack by tests/pipeline/test_scale_out.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO_ROOT
from fault_kit import fault

ROOT = REPO_ROOT
COMPOSE_FILE = ROOT / "infra" / "docker-compose.yml"

# Relative to the repository root: what a checkout that has been used for a while holds, none of it for an image.
SECRETS = [
    ".dvc/config.local",
    ".env",
    ".env.local",
    "infra/.env",
    "infra/docker/.env",
    "flows/.env",
    "src/textrnn/.env.production",
    "params.local",
    ".prefect/profiles.toml",
    "basic_auth.ini",
    "infra/docker/basic_auth.ini",
    ".netrc",
    ".pypirc",
    ".git-credentials",
    ".aws/credentials",
    ".kube/config",
    ".docker/config.json",
    ".mlflow/credentials",
    "tls/server.key",
    "tls/server.pem",
    ".ssh/id_ed25519",
    "id_rsa",
]
LOCAL_STATE = [
    ".git/config",
    ".venv/bin/python",
    "mlflow.db",
    "mlruns/0/meta.yaml",
    "mlartifacts/1/model.onnx",
    "data/raw/train.csv",
    "data/prepared/train.parquet",
    "models/gru/model.pt",
    "artifacts/gru/model.onnx",
    ".cache/mlflow-models/x",
    ".dvc/cache/files/md5/ab/cdef",
    ".dvc/tmp/lock",
    "src/textrnn/__pycache__/cli.cpython-312.pyc",
    "flows/mlflow.db",
]


def _builds() -> list[dict[str, Any]]:
    """Each image compose builds: its context and Dockerfile (relative to the repository root) and the services
    that build it (both workers build the same image)."""
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]  # `<<` merges the worker anchor
    builds: dict[tuple[Path, str], dict[str, Any]] = {}
    for name, service in services.items():
        if "build" in service:
            context = (COMPOSE_FILE.parent / service["build"]["context"]).resolve().relative_to(ROOT)
            dockerfile = service["build"]["dockerfile"]
            build = builds.setdefault((context, dockerfile), {"services": [], "context": context,
                                                              "dockerfile": dockerfile})
            build["services"].append(name)
    return list(builds.values())


BUILDS = _builds()


def _ignore_file(build: dict[str, Any]) -> Path:
    """The file BuildKit reads: `<Dockerfile>.dockerignore` next to the Dockerfile, else the context's .dockerignore."""
    context = ROOT / build["context"]
    specific = context / f"{build['dockerfile']}.dockerignore"
    return specific if specific.is_file() else context / ".dockerignore"


def _patterns(path: Path) -> list[str]:
    """The patterns of a .dockerignore, read as docker-py's build does (blank lines and # comments skipped)."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _checkout_files() -> list[str]:
    """This checkout's files (tracked and untracked, not ignored), relative to the repository root."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout: the fixture tree is made from `git ls-files`")
    return [line for line in out.stdout.splitlines() if line]


def _context_tree(tmp_path: Path, build: dict[str, Any]) -> tuple[Path, set[str]]:
    """A copy of the build context (empty files) with SECRETS and LOCAL_STATE planted; returns it and the planted
    paths that fall inside it, relative to the context."""
    context = build["context"].as_posix()
    prefix = "" if context == "." else f"{context}/"
    tree = tmp_path / "context"
    planted = set()
    for path in [*_checkout_files(), *SECRETS, *LOCAL_STATE]:
        if not path.startswith(prefix):
            continue
        relative = path[len(prefix):]
        target = tree / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.write_text("secret\n" if path in SECRETS else "")
        if path in SECRETS or path in LOCAL_STATE:
            planted.add(relative)
    # The ignore file itself is part of the real context; its name is what BuildKit looks for.
    return tree, planted


def _sent(tree: Path, patterns: list[str], dockerfile: str) -> set[str]:
    """The files a build would send from `tree` (docker-py's matcher; directories left out)."""
    from docker.utils.build import exclude_paths

    return {path for path in exclude_paths(str(tree), list(patterns), dockerfile=dockerfile)
            if (tree / path).is_file()}


def _copied_sources(build: dict[str, Any]) -> list[str]:
    """The sources the Dockerfile's COPY instructions name (`.` means the whole context)."""
    dockerfile = (ROOT / build["context"] / build["dockerfile"]).read_text()
    sources = []
    for line in re.findall(r"^COPY\s+(.+)$", dockerfile, flags=re.MULTILINE):
        words = [word for word in line.split() if not word.startswith("--")]
        sources.extend(words[:-1])
    return sources


def test_compose_builds_two_images_each_with_a_dockerignore() -> None:
    assert sorted(b["services"] for b in BUILDS) == [["cpu-worker", "gpu-worker"], ["mlflow"]]
    for build in BUILDS:
        assert _ignore_file(build).is_file(), f"{build['dockerfile']}: no .dockerignore"


@fault(12, "the checkout holds .dvc/config.local, .env files (infra/.env), Prefect profiles, key files, "
           "mlflow.db, data and models when compose builds an image",
       "none of them is in any build context (Docker's .dockerignore matcher); the files each image needs are")
@pytest.mark.parametrize("build", BUILDS, ids=[Path(b["dockerfile"]).stem for b in BUILDS])
def test_no_secret_or_local_state_enters_an_image(build: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("docker", reason="docker-py (an mlflow dependency) provides Docker's .dockerignore matcher")
    tree, planted = _context_tree(tmp_path, build)
    patterns = _patterns(_ignore_file(build))

    # The fault is real: without these patterns every planted file would go into the image.
    assert planted and planted <= _sent(tree, [], build["dockerfile"])

    sent = _sent(tree, patterns, build["dockerfile"])
    leaked = sorted(planted & sent)
    assert not leaked, f"{_ignore_file(build).name} lets these into the image: {leaked}"

    # What the Dockerfile copies is still there.
    for source in _copied_sources(build):
        if source == ".":
            needed = {"pyproject.toml", "params.yaml", "prefect.yaml", "dvc.yaml", ".dvc/config", "flows/training.py"}
            needed &= set(_checkout_files())  # only those this checkout has
            assert needed <= sent, sorted(needed - sent)
        else:
            matches = {p for p in sent if p == source or p.startswith(f"{source.rstrip('/')}/")}
            assert matches, f"{build['dockerfile']}: COPY {source} would find nothing"


def test_root_dockerignore_is_the_worker_one() -> None:
    """The classic builder (DOCKER_BUILDKIT=0, docker-py) reads only the context root's .dockerignore: the
    repository's is a link to the worker's, so every builder keeps the same files out (one list, one place)."""
    root = ROOT / ".dockerignore"
    worker = ROOT / "infra" / "docker" / "worker.Dockerfile.dockerignore"
    assert root.is_symlink() and root.resolve() == worker.resolve()
    assert set(_patterns(worker)) <= set(_patterns(root))
