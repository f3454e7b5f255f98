"""The whole pipeline, in order. Read this file to know what runs when; everything else follows it.

    prepare → encode                                   the data, once (a no-op where they are current)
    for each variant, concurrently, on any machine:
        prepare → encode                               the same data from the same config, where they are missing
        train → export → evaluate                      holding the machine's device slot
        register                                       a version in the MLflow registry
        announce                                       its run and version, on the pipeline's MLflow run
    collect the rows (from MLflow; untracked, from the report files), log them on the pipeline's run
    promote                                            `champion` moves only to a better version

`run` and `run_variant` are that story over a `Steps` object that says how each step is carried out:
`InProcess` below calls `textrnn.steps` directly (the benchmarks, and anyone scripting textrnn), and
`flows/training.py` runs the same steps as cached Prefect tasks and fans the variants out over processes
or a work pool. DVC's stages (dvc.yaml) follow the same order through their declared inputs, which are
also what Prefect's cache keys are made of (flows/caching.py). The config is resolved once, by the
caller, and handed down as a `Config`: a worker gets it as data (`Config.model_dump`), never by reading its
own params.yaml.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from textrnn import results, steps
from textrnn.config import Config
from textrnn.errors import TextrnnError

DATA_STEPS = ("prepare", "encode")
VARIANT_STEPS = ("train", "export", "evaluate", "register")
FINAL_STEPS = ("promote",)


class PipelineError(TextrnnError):
    """A variant failed, or the pipeline cannot run as configured; stated in one line."""


class Steps(Protocol):
    """How each step is carried out. Each returns the matching `textrnn.steps` function's result;
    `train` also says whether it was a cache hit."""

    def prepare(self, cfg: Config) -> Any: ...
    def encode(self, cfg: Config) -> Any: ...
    def train(self, cfg: Config, variant: str, parent_run_id: str | None) -> tuple[dict[str, Any], bool]: ...
    def export(self, cfg: Config, variant: str) -> Any: ...
    def evaluate(self, cfg: Config, variant: str) -> Any: ...
    def register(self, cfg: Config, variant: str) -> dict[str, Any]: ...
    def promote(self, cfg: Config, versions: Sequence[str] | None) -> dict[str, Any]: ...
    def device_slot(self) -> contextlib.AbstractContextManager[None]: ...


# Runs every variant (each through `run_variant`, wherever that happens) and returns
# ({variant: its attribution} for those that completed, ["<variant>: <why>" for those that failed]).
FanOut = Callable[[Config, Sequence[str], "str | None"], tuple[dict[str, dict[str, Any]], list[str]]]


def run_variant(cfg: Config, variant: str, how: Steps, parent_run_id: str | None = None) -> dict[str, Any]:
    """One variant, start to end, on the machine that runs it; returns its attribution (`results`)."""
    how.prepare(cfg)
    how.encode(cfg)
    with how.device_slot():
        summary, cached = how.train(cfg, variant, parent_run_id)
        how.export(cfg, variant)
        how.evaluate(cfg, variant)
    registration = how.register(cfg, variant)
    attributed = results.attribution(variant, train_cached=cached, mlflow_run_id=summary.get("mlflow_run_id"),
                                     model_version=registration.get("version"))
    if cfg.tracking.enabled and parent_run_id is not None:
        results.announce(parent_run_id, attributed)
    return attributed


# Shows the comparison where its user looks (the terminal, a Prefect artifact): (rows, promotion, failures).
Publish = Callable[[list[dict[str, Any]], dict[str, Any], list[str]], None]


def run(cfg: Config, variants: Sequence[str], how: Steps, fan_out: FanOut, parent_run_name: str | None = None,
        parent_run_tags: dict[str, str] | None = None, publish: Publish | None = None) -> dict[str, Any]:
    """The pipeline: the data, every variant (through `fan_out`), the rows, the promotion, the comparison.

    Returns {variants: rows, promotion, mlflow_parent_run_id}. When a variant fails the others still
    finish, nothing is promoted, the comparison is published, and then PipelineError names every failed
    variant (the parent MLflow run ends FAILED)."""
    how.prepare(cfg)
    how.encode(cfg)
    with steps.pipeline_run(cfg, parent_run_name, parent_run_tags) as parent_run_id:
        attributions, failures = fan_out(cfg, variants, parent_run_id)
        finished = [name for name in variants if name in attributions]
        rows = results.collect(cfg, attributions, finished, parent_run_id)
        if parent_run_id is not None and rows:
            results.log_summary(parent_run_id, rows)
        if failures:
            promotion = {"promoted": False, "reason": "skipped: some variants failed"}
        else:
            versions = [row["model_version"] for row in rows if row.get("model_version")]
            promotion = how.promote(cfg, versions or None)
        if publish is not None:
            publish(rows, promotion, failures)
        if failures:
            raise PipelineError(f"{len(failures)} of {len(variants)} variants failed: " + "; ".join(failures))
    return {"variants": rows, "promotion": promotion, "mlflow_parent_run_id": parent_run_id}


class InProcess:
    """Every step called directly in this process (`Steps` for scripts and benchmarks). Nothing is cached,
    except that the data steps run once per config: the variants share this process's disk."""

    def __init__(self) -> None:
        self._data_done: dict[tuple[str, str], Any] = {}

    def _once(self, step: Callable[[Config], Any], cfg: Config) -> Any:
        key = (step.__name__, cfg.model_dump_json())
        if key not in self._data_done:
            self._data_done[key] = step(cfg)
        return self._data_done[key]

    def prepare(self, cfg: Config) -> Any:
        return self._once(steps.prepare_step, cfg)

    def encode(self, cfg: Config) -> Any:
        return self._once(steps.encode_step, cfg)

    def train(self, cfg: Config, variant: str, parent_run_id: str | None) -> tuple[dict[str, Any], bool]:
        return steps.train_step(cfg, variant, parent_run_id=parent_run_id), False

    def export(self, cfg: Config, variant: str) -> Any:
        return steps.export_step(cfg, variant)

    def evaluate(self, cfg: Config, variant: str) -> Any:
        return steps.evaluate_step(cfg, variant)

    def register(self, cfg: Config, variant: str) -> dict[str, Any]:
        return steps.register_step(cfg, variant)

    def promote(self, cfg: Config, versions: Sequence[str] | None) -> dict[str, Any]:
        return steps.promote_step(cfg, versions)

    @contextlib.contextmanager
    def device_slot(self) -> Iterator[None]:
        yield


def one_after_another(how: Steps) -> FanOut:
    """A fan-out that runs the variants in this process, one after another; a failure is recorded and
    the next variant still runs."""

    def fan_out(cfg: Config, variants: Sequence[str], parent_run_id: str | None):
        attributions, failures = {}, []
        for name in variants:
            try:
                attributions[name] = run_variant(cfg, name, how, parent_run_id)
            except Exception as error:  # noqa: BLE001 - reported with the others, as the Prefect fan-out does
                failures.append(f"{name}: {error}")
        return attributions, failures

    return fan_out


def run_in_process(cfg: Config, variants: Sequence[str] | None = None) -> dict[str, Any]:
    """The whole pipeline in this process, variants one after another, no Prefect and no cache."""
    how = InProcess()
    return run(cfg, list(variants or cfg.variants), how, one_after_another(how))
