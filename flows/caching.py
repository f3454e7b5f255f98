"""Cache keys for the pipeline's tasks: the config keys a step reads plus the bytes of the files it reads.

A key never hashes tensors, DataFrames or task results: only config values and file digests, so the same
inputs give the same key in any process, on any day. Each step declares the dotted `params.yaml` keys
it reads (`STEP_KEYS`, as a DVC stage lists its `params`; tests/test_flows.py runs every step on a
recording config to check the list), the files it reads, and the files it writes. The textrnn modules
a step runs count as inputs too: editing `train.py` retrains, editing `evaluate.py` only re-evaluates.

After every run the flow stamps which key produced the outputs now on disk (as DVC's lock file does). A
cache hit is taken only while those outputs are still here and unchanged since: deleting `models/`,
running on a fresh worker, or overwriting a model with another config (then switching back) recomputes
instead of returning a result that no longer describes the files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import textrnn
from textrnn.config import Config
from textrnn.data import SPLITS
from textrnn.files import read_json, sha256_file, write_json

SOURCE_DIR = Path(textrnn.__file__).resolve().parent
# Where a step's persisted results and cache records live, under the workspace's `paths.cache`.
RESULTS_SUBDIR = "prefect-results"
# The params.yaml keys each step reads; `{variant}` is the variant the step runs. A tracked train
# reads `data` and `tokenizer` whole because it logs the full config to the variant's MLflow run.
STEP_KEYS: dict[str, tuple[str, ...]] = {
    "prepare": ("seed", "data", "paths.prepared", "paths.cache"),
    # Every step but prepare also reads paths.cache: its lock lives there (textrnn.locks).
    "encode": ("seed", "tokenizer", "buckets", "paths.prepared", "paths.encoded", "paths.cache"),
    "train": ("seed", "data", "tokenizer", "buckets", "train", "variants.{variant}", "tracking", "paths.prepared",
              "paths.encoded", "paths.models", "paths.metrics", "paths.plots", "paths.cache"),
    "export": ("tracking", "paths.prepared", "paths.encoded", "paths.models", "paths.cache"),
    "evaluate": ("data.classes", "data.source", "tracking", "paths.prepared", "paths.encoded", "paths.models",
                 "paths.metrics", "paths.plots", "paths.cache"),
}


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
    return sha256_file(path) if path.is_file() else None


def _value(dumped: dict[str, Any], key: str) -> Any:
    """The value at dotted `key` of a dumped config; `paths.*` made absolute (relative ones mean
    different files in different working directories)."""
    node: Any = dumped
    for part in key.split("."):
        node = node[part]
    return str(Path(node).resolve()) if key.startswith("paths.") else node


def config_slice(cfg: Config, step: str, variant: str | None = None) -> dict[str, Any]:
    """{dotted key: value} for every key `step` reads (`STEP_KEYS`), for `variant` where it runs one."""
    dumped = cfg.model_dump(mode="json")
    keys = (key.format(variant=variant) for key in STEP_KEYS[step])
    return {key: _value(dumped, key) for key in keys}


def _tracking_target(cfg: Config) -> dict[str, Any]:
    """Where a tracked step logs: on another tracking server its MLflow run must exist there, so it reruns."""
    if not cfg.tracking.enabled:
        return {}
    from textrnn.tracking import tracking_uri  # tracking is on: the step imports mlflow anyway

    return {"tracking_uri": tracking_uri()}


def _sources(*modules: str) -> tuple[Path, ...]:
    return tuple(SOURCE_DIR / f"{module}.py" for module in modules)


def _run_record(cfg: Config, variant: str) -> tuple[Path, ...]:
    """`models/<V>/mlflow_run.json` when tracked: export and evaluate log into the run it names."""
    return (cfg.paths.run_record(variant),) if cfg.tracking.enabled else ()


def _prepared(cfg: Config, splits: Iterable[str] = SPLITS) -> tuple[Path, ...]:
    return tuple(cfg.paths.prepared / f"{split}.parquet" for split in splits)


def _encoded(cfg: Config, splits: Iterable[str] = SPLITS) -> tuple[Path, ...]:
    return tuple(cfg.paths.encoded / f"{split}.npz" for split in splits)


def prepare_files(cfg: Config) -> StepFiles:
    """Reads the source: local files by content; the Hub and the sample through their config."""
    local = [Path(path) for path in (cfg.data.train_path, cfg.data.test_path) if path is not None]
    return StepFiles(
        config=config_slice(cfg, "prepare"),
        inputs=(*local, *_sources("data", "sample")),
        outputs=(*_prepared(cfg), cfg.paths.prepared / "report.json"),
    )


def encode_files(cfg: Config) -> StepFiles:
    """Reads the prepared splits; writes the encoded splits, the bucket report and the tokenizer."""
    return StepFiles(
        config=config_slice(cfg, "encode"),
        inputs=(*_prepared(cfg), *_sources("tokens", "bucketing")),
        outputs=(*_encoded(cfg), cfg.paths.encoded / "buckets.json", cfg.paths.tokenizer),
    )


def train_files(cfg: Config, variant: str) -> StepFiles:
    """Reads the encoded train/val splits and the tokenizer (tracked: logs the prepared splits too)."""
    model_dir = cfg.paths.model_dir(variant)
    return StepFiles(
        config={**config_slice(cfg, "train", variant), "variant": variant, **_tracking_target(cfg)},
        inputs=(*_encoded(cfg, ("train", "val")), cfg.paths.tokenizer,
                *(_prepared(cfg, ("train", "val")) if cfg.tracking.enabled else ()),
                *_sources("train", "models", "optim", "bucketing")),
        outputs=(model_dir / "model.pt", cfg.paths.metrics_dir(variant) / "train.json", *_run_record(cfg, variant)),
    )


def export_files(cfg: Config, variant: str) -> StepFiles:
    """Reads model.pt and the tokenizer (tracked: the test split, for the logged model's input example)."""
    model_dir = cfg.paths.model_dir(variant)
    return StepFiles(
        config={**config_slice(cfg, "export", variant), "variant": variant, **_tracking_target(cfg)},
        inputs=(model_dir / "model.pt", cfg.paths.tokenizer, *_run_record(cfg, variant),
                *(_prepared(cfg, ("test",)) if cfg.tracking.enabled else ()), *_sources("export", "models")),
        outputs=(model_dir / "model.onnx", model_dir / "tokenizer.json", model_dir / "export.json"),
    )


def evaluate_files(cfg: Config, variant: str, device: str) -> StepFiles:
    """Reads the exported model, the test split and train.json (learning curves) on `device`."""
    model_dir = cfg.paths.model_dir(variant)
    return StepFiles(
        config={**config_slice(cfg, "evaluate", variant), "variant": variant, "device": device,
                **_tracking_target(cfg)},
        inputs=(model_dir / "model.onnx", model_dir / "tokenizer.json", *_prepared(cfg, ("test",)),
                cfg.paths.metrics_dir(variant) / "train.json", *_run_record(cfg, variant),
                *_sources("evaluate", "inference")),
        outputs=(cfg.paths.metrics_dir(variant) / "eval.json",),
    )


def cache_key_from(describe: Callable[..., StepFiles], *parameter_names: str) -> Callable[[Any, dict[str, Any]], str]:
    """A Prefect `cache_key_fn` that describes the task's step from the named task parameters."""

    def cache_key(context: Any, parameters: dict[str, Any]) -> str:
        return describe(*(parameters[name] for name in parameter_names)).key(context.task.name)

    return cache_key


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
