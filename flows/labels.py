"""How textrnn's runs read in the Prefect UI: their names and their tags.

Names (Prefect's `flow_run_name` / `task_run_name`): the pipeline's flow run is
`pipeline-<UTC YYYY-MM-DD-HHMM>-<commit>` (see `pipeline_run_name`), each variant's flow run `train-<variant>`,
each step's task run `<step>-<variant>` (`train-gru`, `export-gru`, ...; `prepare`, `encode`, `promote`).

Tags: every run the pipeline starts carries `textrnn`; every run of one variant carries `variant:<name>`; every
step's task run carries `stage:<step>`, and a variant's own flow run (and the pipeline's task that waits on it)
`stage:train-variant`. A task or flow run gets the tags in effect where it is started (Prefect's `tags(...)`
context, or `run_deployment(tags=...)` merged with the deployment's); a flow run started with none of ours (from
the CLI, or by hand) adds its own with `tag_flow_run`.
"""

from __future__ import annotations

from datetime import datetime, timezone

from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect import runtime

from textrnn.provenance import git_tags

TEXTRNN_TAG = "textrnn"
VARIANT_STAGE = "train-variant"  # the stage of a variant's flow run, named after its flow and deployment
AUTO_SCHEDULED_TAG = "auto-scheduled"  # what Prefect's scheduler tags the flow runs it creates with


def stage_tag(step: str) -> str:
    return f"stage:{step}"


def variant_tag(variant: str) -> str:
    return f"variant:{variant}"


def variant_run_tags(variant: str) -> list[str]:
    """The tags of a variant's flow run (and of the pipeline's task that starts it)."""
    return [variant_tag(variant), stage_tag(VARIANT_STAGE)]


def stamped_name(prefix: str, started: datetime, commit: str) -> str:
    """`<prefix>-<YYYY-MM-DD-HHMM of `started`, in UTC>-<first 8 characters of commit>`."""
    return f"{prefix}-{started.astimezone(timezone.utc):%Y-%m-%d-%H%M}-{commit[:8]}"


def pipeline_run_name() -> str:
    """The pipeline flow run's name (its `flow_run_name`, resolved by Prefect when the run starts), from the
    run as `prefect.runtime` describes it: see `name_for_pipeline_run`."""
    run = runtime.flow_run
    return name_for_pipeline_run(
        deployment=runtime.deployment.name if runtime.deployment.id else None, tags=run.tags or [], name=run.name,
        started=run.scheduled_start_time or datetime.now(timezone.utc), commit=git_tags()["git_commit"],
    )


def name_for_pipeline_run(deployment: str | None, tags: list[str], name: str, started: datetime, commit: str) -> str:
    """`pipeline-<started, UTC>-<commit>` for a run started from code (`textrnn pipeline`); a run its deployment's
    schedule created (which Prefect names at random) gets the deployment's name in place of `pipeline`
    (`nightly-train-...`). A run someone started from a deployment keeps its `name`: the one it was given
    (`prefect deployment run --flow-run-name`, `run_deployment(flow_run_name=...)`), or Prefect's random one.
    """
    if deployment is None:
        return stamped_name("pipeline", started, commit)
    if AUTO_SCHEDULED_TAG in tags:
        return stamped_name(deployment, started, commit)
    return name


def tag_flow_run(*tags: str) -> None:
    """Add `tags` to the flow run in progress, where it lacks them (one API call, none when it has them all)."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    run = context.flow_run
    missing = [tag for tag in tags if tag not in run.tags]
    if not missing:
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run(run.id, tags=[*run.tags, *missing])
    run.tags = [*run.tags, *missing]
