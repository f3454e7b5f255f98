"""Zombie flow runs: Prefect's documented recipe ("How to detect and respond to zombie flows").

A flow run whose machine dies (the worker and the flow-run process with it: a crash, an eviction, a
SIGKILL) reports nothing more and would stay Running forever. Every flow run started from a deployment
emits a `prefect.flow-run.heartbeat` event every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds (30, set for
every deployment in prefect.yaml). The automation below expects, after each heartbeat of a flow run,
another heartbeat or a terminal state within `within` seconds; when none comes it marks the run Crashed.
The pipeline then submits the crashed variant again to the pool (`flows.training.run_variant_on_worker`),
so another worker trains it.

The pipeline creates the automation when it is missing (distributed mode). To create it by hand, or to
change the detection window on a server:

    PREFECT_API_URL=http://<host>:4200/api python -m flows.resilience --within 120
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from uuid import UUID

ZOMBIE_AUTOMATION = "textrnn: crash zombie flow runs"
HEARTBEAT_SECONDS = 30  # PREFECT_FLOWS_HEARTBEAT_FREQUENCY in prefect.yaml (Prefect's minimum)
ZOMBIE_AFTER_S = 3 * HEARTBEAT_SECONDS  # three missed heartbeats, as Prefect's guide does


def zombie_automation(within_s: float = ZOMBIE_AFTER_S):
    """The automation (not yet created): Crashed for a flow run silent for `within_s` after a heartbeat."""
    from prefect.automations import AutomationCore
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    if within_s <= HEARTBEAT_SECONDS:
        raise ValueError(f"within_s must exceed the heartbeat interval ({HEARTBEAT_SECONDS} s)")
    return AutomationCore(
        name=ZOMBIE_AUTOMATION,
        description="Marks a flow run Crashed when its heartbeats stop (its worker or machine died), so that "
                    "textrnn's pipeline submits the variant again.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_s),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message="Flow run marked as crashed due to missing heartbeats.")],
    )


def ensure_zombie_automation(within_s: float | None = None) -> UUID:
    """Create the automation on the configured Prefect server unless one of that name exists; returns its id.

    With `within_s`, an existing automation gets that window; without, an existing one is left as it is.
    """
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(ZOMBIE_AUTOMATION)
        if existing and within_s is None:
            return existing[0].id
        automation = zombie_automation(ZOMBIE_AFTER_S if within_s is None else within_s)
        if existing:
            client.update_automation(existing[0].id, automation)
            return existing[0].id
        return client.create_automation(automation)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--within", type=float, default=None,
                        help=f"seconds without a heartbeat before a run is marked Crashed (default {ZOMBIE_AFTER_S})")
    args = parser.parse_args(argv)
    automation_id = ensure_zombie_automation(args.within)
    print(f"automation '{ZOMBIE_AUTOMATION}': {automation_id}")


if __name__ == "__main__":
    main()
