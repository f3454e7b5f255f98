"""Cache keys for the pipeline's tasks, derived from dvc.yaml: the one declaration of what each step reads.

Each DVC stage lists the params.yaml keys its step reads (`params`), the code modules it imports and the
files it reads (`deps`), and the files it writes (`outs`, `metrics`, `plots`); tests/pipeline/test_dvc.py checks
those lists against what each step really reads and imports. A Prefect task's cache key is a digest of
the same things: the stage's params (plus `paths`, which DVC sees as file locations), the bytes of its
code modules and of its input files, where the files are the stage's deps moved to this config's `paths`
(dvc.yaml writes them at params.yaml's default locations). So editing a module, a param or an input
reruns the same steps under DVC and under Prefect. Two additions DVC cannot express: a csv/parquet
source's files count by content for `prepare`, and a tracked step's key includes the tracking server.

A key never hashes tensors, DataFrames or task results: only config values and file digests, so the same
inputs give the same key in any process, on any day. After every run the flow stamps which key produced
the outputs now on disk (as DVC's lock file does). A cache hit is taken only while those outputs are
still here and unchanged since: deleting `models/`, running on a fresh worker, or overwriting a model
with another config (then switching back) recomputes instead of returning a result that no longer
describes the files.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import textrnn
from textrnn.config import Config, PathsConfig
from textrnn.files import read_json, sha256_file, write_json

SOURCE_DIR = Path(textrnn.__file__).resolve().parent
# dvc.yaml sits at the checkout's root, beside flows/ (a Prefect worker runs from a checkout).
DVC_FILE = Path(__file__).resolve().parent.parent / "dvc.yaml"
CODE_PREFIX = "src/textrnn/"
# Where a step's persisted results and cache records live, under the workspace's `paths.cache`.
RESULTS_SUBDIR = "prefect-results"
# The cached Prefect tasks; each is named after the DVC stage that runs the same step (DVC's `evaluate`
# stage also registers: registering is never cached).
CACHED_STEPS = ("prepare", "encode", "train", "export", "evaluate")
# Where dvc.yaml writes its file deps and outs: the default `paths` (params.yaml states the same values).
DEFAULT_PATHS = {key: str(value) for key, value in PathsConfig().model_dump().items()}


@functools.cache
def dvc_stages() -> dict[str, dict[str, Any]]:
    """dvc.yaml's stages by name; a `foreach` stage as its `do` template (`${key}` is the variant)."""
    stages = yaml.safe_load(DVC_FILE.read_text(encoding="utf-8"))["stages"]
    return {name: stage["do"] if "foreach" in stage else stage for name, stage in stages.items()}


def _entry_path(entry: str | dict[str, Any]) -> str:
    return entry if isinstance(entry, str) else next(iter(entry))  # `- metrics/x.json: {cache: false}`


def _configured(cfg: Config, written: str) -> Path:
    """A dvc.yaml path, written at the default `paths`, at this config's `paths` (the longest default
    that is a prefix wins: `data/encoded/tokenizer.json` is under `encoded`)."""
    best = None
    for key, default in DEFAULT_PATHS.items():
        if written == default or written.startswith(default.rstrip("/") + "/"):
            if best is None or len(default) > len(best[1]):
                best = (key, default)
    if best is None:
        return Path(written)
    rest = written[len(best[1]):].lstrip("/")
    base = getattr(cfg.paths, best[0])
    return base / rest if rest else base


def _stage_paths(cfg: Config, entries: list[Any], variant: str | None) -> tuple[Path, ...]:
    return tuple(_configured(cfg, _entry_path(entry).replace("${key}", variant or "")) for entry in entries)


def stage_modules(step: str) -> tuple[str, ...]:
    """The textrnn modules (`train`, `models`, ...) the step's DVC stage declares."""
    deps = [_entry_path(dep) for dep in dvc_stages()[step].get("deps", [])]
    return tuple(dep.removeprefix(CODE_PREFIX).removesuffix(".py") for dep in deps if dep.startswith(CODE_PREFIX))


def stage_params(step: str, variant: str | None = None) -> tuple[str, ...]:
    """The params.yaml keys the step's DVC stage declares, for `variant`; plus `paths`, which DVC
    tracks as the locations of its deps and outs."""
    declared = [_entry_path(key).replace("${key}", variant or "") for key in dvc_stages()[step]["params"]]
    return (*declared, "paths")


def stage_inputs(cfg: Config, step: str, variant: str | None = None) -> tuple[Path, ...]:
    """The step's input files and directories (its DVC deps other than code), at this config's paths."""
    deps = [dep for dep in dvc_stages()[step].get("deps", []) if not _entry_path(dep).startswith(CODE_PREFIX)]
    return _stage_paths(cfg, deps, variant)


def stage_outputs(cfg: Config, step: str, variant: str | None = None) -> tuple[Path, ...]:
    """The files the step writes (its DVC outs, metrics and plots), at this config's paths."""
    stage = dvc_stages()[step]
    return _stage_paths(cfg, [*stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", [])], variant)


@dataclass(frozen=True)
class StepFiles:
    """What one step reads and writes; its cache key is a digest of `config` and the `inputs`' bytes."""

    config: dict[str, Any]
    inputs: tuple[Path, ...]
    outputs: tuple[Path, ...]

    def fingerprint(self) -> dict[str, Any]:
        """The JSON the key is a digest of; a missing input counts as `null` (the step will then fail)."""
        return {"config": self.config, "inputs": {str(path): _digest(path) for path in self.inputs}}

    def key(self, step: str) -> str:
        """`<step>-<sha256 prefix>`: readable in the result storage, unique per fingerprint."""
        payload = json.dumps(self.fingerprint(), sort_keys=True, default=str).encode()
        return f"{step}-{hashlib.sha256(payload).hexdigest()[:40]}"

    def output_digests(self) -> dict[str, str | None]:
        return {str(path): _digest(path) for path in self.outputs}


def _digest(path: Path) -> str | None:
    """A file's sha256; a directory's, over its files' relative paths and sha256s; None when missing."""
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        return None
    listing = "\n".join(f"{file.relative_to(path).as_posix()}:{sha256_file(file)}"
                        for file in sorted(path.rglob("*")) if file.is_file())
    return hashlib.sha256(listing.encode()).hexdigest()


def _value(dumped: dict[str, Any], key: str) -> Any:
    """The value at dotted `key` of a dumped config; paths made absolute (relative ones mean different
    files in different working directories)."""
    node: Any = dumped
    for part in key.split("."):
        node = node[part]
    if key == "paths":
        return {name: str(Path(value).resolve()) for name, value in node.items()}
    return node


def config_slice(cfg: Config, step: str, variant: str | None = None) -> dict[str, Any]:
    """{dotted key: value} for every key `step`'s stage declares (`stage_params`), for `variant`."""
    dumped = cfg.model_dump(mode="json")
    return {key: _value(dumped, key) for key in stage_params(step, variant)}


def _tracking_target(cfg: Config) -> dict[str, Any]:
    """Where a tracked step logs: on another tracking server its MLflow run must exist there, so it reruns."""
    if not cfg.tracking.enabled:
        return {}
    from textrnn.tracking import tracking_uri  # tracking is on: the step imports mlflow anyway

    return {"tracking_uri": tracking_uri()}


def step_files(cfg: Config, step: str, variant: str | None = None, device: str | None = None) -> StepFiles:
    """What `step` (for `variant`; evaluated on `device`) reads and writes, from its DVC stage."""
    source_files = ()
    if step == "prepare":  # a csv/parquet source counts by content (DVC sees only its path, a param)
        source_files = tuple(Path(path) for path in (cfg.data.train_path, cfg.data.test_path) if path is not None)
    config = config_slice(cfg, step, variant)
    if variant is not None:
        config |= {"variant": variant, **_tracking_target(cfg)}
    if device is not None:
        config["device"] = device
    return StepFiles(
        config=config,
        inputs=(*source_files, *stage_inputs(cfg, step, variant),
                *(SOURCE_DIR / f"{module}.py" for module in stage_modules(step))),
        outputs=stage_outputs(cfg, step, variant),
    )


def step_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    """The Prefect `cache_key_fn` of every cached step task: `step_files` of the task's step, from its
    `cfg` and (where it has them) `variant` and `device` parameters."""
    step = context.task.name
    return step_files(parameters["cfg"], step, parameters.get("variant"), parameters.get("device")).key(step)


def result_storage(cfg: Config) -> Path:
    """The workspace's Prefect result storage: `<paths.cache>/prefect-results` (removed by `make clean`)."""
    return (cfg.paths.cache / RESULTS_SUBDIR).resolve()


def stamp_file(cfg: Config, name: str) -> Path:
    """Where the flow records which key produced the outputs of step run `name` (e.g. `train-gru`)."""
    return result_storage(cfg) / "outputs" / f"{name}.json"


def outputs_from(stamp: Path, key: str, files: StepFiles) -> bool:
    """True when every output of `files` is on disk, unchanged since the run with cache key `key`."""
    if not stamp.is_file():
        return False
    recorded = read_json(stamp)
    digests = files.output_digests()
    return recorded.get("key") == key and None not in digests.values() and recorded.get("outputs") == digests


def record_outputs(stamp: Path, key: str, files: StepFiles) -> None:
    """Stamp the outputs now on disk as produced by the run with cache key `key`."""
    write_json(stamp, {"key": key, "outputs": files.output_digests()})
